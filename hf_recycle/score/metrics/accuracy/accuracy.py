"""Accuracy: the fraction of predicted labels equal to their reference label.

Bundled with hf-recycle and loaded by local path, so it works offline.
"""

import datasets
import evaluate

_DESCRIPTION = "Fraction of predicted labels equal to the reference label (0..1)."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): reference labels, one per prediction.
    per_example (bool): also return the 0/1 score of every example under ``per_example``.
Returns:
    accuracy (float): mean of the per-example scores, in 0..1 (0.0 for no examples).
Examples:
    >>> metric = evaluate.load("hf_recycle/score/metrics/accuracy")
    >>> metric.compute(predictions=[0, 1, 2, 1], references=[0, 1, 1, 1])
    {'accuracy': 0.75}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    """Label accuracy."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, per_example=False):
        scores = [float(p == r) for p, r in zip(predictions, references, strict=True)]
        result = {"accuracy": sum(scores) / len(scores) if scores else 0.0}
        if per_example:
            result["per_example"] = scores
        return result
