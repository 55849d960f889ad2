"""``hf``: the reference engine, the live ``transformers`` model run task by task.

Each task is a :class:`~hf_recycle._score.scorer.TaskScorer` (data encoded once, batched
forward passes or greedy generation on the live model). The model's parameters are the
ones the search rewrites, so nothing is reloaded when the weights change.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hf_recycle._score.engines import ScoringEngine


class TransformersEngine(ScoringEngine):
    """Per-task scorers run in turn on the live model.

    Args:
        scorers: One per task, each with ``name``, ``weight``, ``higher_is_better``,
            ``num_examples`` and ``score(model, limit=None, resume=None)``.
    """

    name = "hf"

    def __init__(self, scorers: Sequence[Any]) -> None:
        if not scorers:
            from hf_recycle.errors import TaskError

            raise TaskError("a scoring engine needs at least one task")
        self.scorers = list(scorers)

    @classmethod
    def build(cls, tokenizer, tasks, split, base_dir: str | Path | None = None, **options):
        from hf_recycle._score.scorer import build_scorers

        return cls(build_scorers(list(tasks), tokenizer, split=split, base_dir=base_dir))

    @property
    def tasks(self) -> Sequence[Any]:
        return self.scorers

    def score(self, model, *, limit=None, limit_fraction=None, resume=None):
        limits = self.limits(limit, limit_fraction)
        results = {}
        for scorer in self.scorers:
            # resume= only when given: scorers without it still work
            extra = {} if resume is None else {"resume": resume[scorer.name]}
            results[scorer.name] = scorer.score(model, limit=limits[scorer.name], **extra)
        return results
