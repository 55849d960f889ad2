"""``perplexity``: of the target tokens after the prompt, per example and over the corpus (lower is better)."""

from __future__ import annotations

import math

from hf_recycle._score.kinds import TaskKindDef


class Perplexity(TaskKindDef):
    name = "perplexity"
    higher_is_better = False
    order = 3

    def aggregate(self, outputs, scorer, n):
        per_example = [math.exp(-lp / count) for lp, count in outputs]
        counts = [count for _, count in outputs]
        return math.exp(-math.fsum(lp for lp, _ in outputs) / sum(counts)), per_example, counts
