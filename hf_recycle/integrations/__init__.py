"""hf-recycle inside other libraries' loops (the ``transformers`` Trainer: :mod:`~hf_recycle.integrations.trainer`)."""
