"""Searching the merge weights: the study, the candidate model, samplers, workers, results.

A private package (its name starts with ``_``): the public names are ``hf_recycle.search``
(the function) and :class:`hf_recycle.SearchResults`, so that importing one of its modules
never rebinds ``hf_recycle.search``.
"""
