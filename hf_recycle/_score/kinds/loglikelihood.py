"""``loglikelihood``: the summed log-probability of the target after the prompt, averaged (higher is better)."""

from __future__ import annotations

import math

from hf_recycle._score.kinds import TaskKindDef


class LogLikelihood(TaskKindDef):
    name = "loglikelihood"
    order = 2

    def aggregate(self, outputs, scorer, n):
        per_example = [lp for lp, _ in outputs]
        return math.fsum(per_example) / n, per_example, [count for _, count in outputs]
