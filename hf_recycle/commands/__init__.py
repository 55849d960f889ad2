"""One module per ``hf-recycle`` subcommand; see :mod:`hf_recycle.cli`."""
