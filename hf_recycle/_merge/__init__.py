"""Merging: lazy tensor sources, merge methods, and the streaming engine.

A private package (its name starts with ``_``): the public names are ``hf_recycle.merge``
(the function), :class:`hf_recycle.MergeResult` and :class:`hf_recycle.GroupWeights`, so
that importing one of these modules never rebinds ``hf_recycle.merge``. Merge methods are
added as one module of :mod:`hf_recycle._merge.methods` (see its registry).
"""
