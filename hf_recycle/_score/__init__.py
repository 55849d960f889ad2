"""Scoring: tasks (datasets) -> batched inference -> metrics (evaluate) -> values.

:mod:`hf_recycle._score.tasks` holds the task schema, :mod:`hf_recycle._score.scorer`
the per-task scorers the search calls on a live model, :mod:`hf_recycle._score.api`
the public :func:`score` function, exported as ``hf_recycle.score``. A private package (its
name starts with ``_``), so that importing one of its modules never rebinds ``hf_recycle.score``.
"""
