"""``generate``: greedy continuation, cut at the stop strings, compared with the target by the metric."""

from __future__ import annotations

from hf_recycle._score.kinds import TaskKindDef


class Generate(TaskKindDef):
    name = "generate"
    generates = True
    default_metric = "exact_match"
    order = 0

    def aggregate(self, outputs, scorer, n):
        from hf_recycle._score.generate import cut_at_stop

        predictions = [scorer.decode(ids) for ids in outputs]
        predictions = [cut_at_stop(text, scorer.spec.stop).strip() for text in predictions]
        value, per_example = scorer.metric.compute(predictions, scorer.references(n))
        return value, per_example, predictions
