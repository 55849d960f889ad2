"""Exact match: the fraction of predictions that equal their reference string exactly.

Bundled with hf-recycle and loaded by local path, so it works offline. Strings are
compared as given; hf-recycle's ``generate`` scorer strips surrounding whitespace from
the continuation and the target before calling it.
"""

import datasets
import evaluate

_DESCRIPTION = "Fraction of predictions identical to their reference (0..1)."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): predicted strings.
    references (list of str): reference strings, one per prediction.
    per_example (bool): also return the 0/1 score of every example under ``per_example``.
Returns:
    exact_match (float): mean of the per-example scores, in 0..1 (0.0 for no examples).
Examples:
    >>> metric = evaluate.load("hf_recycle/score/metrics/exact_match")
    >>> metric.compute(predictions=["4", "5"], references=["4", "6"])
    {'exact_match': 0.5}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExactMatch(evaluate.Metric):
    """Exact string match."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, per_example=False):
        scores = [float(p == r) for p, r in zip(predictions, references, strict=True)]
        result = {"exact_match": sum(scores) / len(scores) if scores else 0.0}
        if per_example:
            result["per_example"] = scores
        return result
