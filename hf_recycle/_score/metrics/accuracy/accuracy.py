"""Accuracy: the fraction of predicted labels equal to their reference label.

Bundled with hf-recycle and loaded by local path, so it works offline.
"""

from hf_recycle._score.bundled_metric import PerExampleMetric


class Accuracy(PerExampleMetric):
    """Label accuracy."""

    score_key = "accuracy"
    value_type = "int64"
    summary = "Fraction of predicted labels equal to the reference label (0..1)."
    arguments = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): reference labels, one per prediction.
    per_example (bool): also return the 0/1 score of every example under ``per_example``.
Returns:
    accuracy (float): mean of the per-example scores, in 0..1 (0.0 for no examples).
Examples:
    >>> metric = evaluate.load("hf_recycle/_score/metrics/accuracy")
    >>> metric.compute(predictions=[0, 1, 2, 1], references=[0, 1, 1, 1])
    {'accuracy': 0.75}
"""

    def score_example(self, prediction, reference):
        return float(prediction == reference)
