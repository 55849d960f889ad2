"""Hub stage: checkpoint specs to pinned revisions, safe downloads and lock files.

Import the submodules directly (``hf_recycle.hub.resolve``); this package imports nothing.
"""
