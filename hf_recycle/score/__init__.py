"""Scoring: tasks (datasets) -> batched inference -> metrics (evaluate) -> values.

:mod:`hf_recycle.score.tasks` holds the task schema, :mod:`hf_recycle.score.scorer`
the per-task scorers the search calls on a live model, :mod:`hf_recycle.score.api`
the public :func:`score` function.
"""
