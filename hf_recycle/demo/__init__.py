"""The ``make demo`` walkthrough: a tiny pool of checkpoints with real trade-offs, recycled end to end.

Run it with ``python -m hf_recycle.demo`` (``make demo``). Submodules: :mod:`.tasks`
(synthetic data), :mod:`.pool` (training), :mod:`.run` (local Hub, pipeline, table).
"""
