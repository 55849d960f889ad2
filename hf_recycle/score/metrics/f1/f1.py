"""Token F1: the mean over examples of the F1 of predicted vs reference tokens (SQuAD style).

Bundled with hf-recycle and loaded by local path, so it works offline. Unlike the Hub's
label-level ``f1`` (scikit-learn on class ids), this one compares free text, which is
what generation tasks produce: both strings are lower-cased and split on whitespace,
and each example scores ``2·P·R / (P + R)`` over the multiset of shared tokens (1.0 when
both are empty, 0.0 when only one is).
"""

from collections import Counter

import datasets
import evaluate

_DESCRIPTION = "Mean token-overlap F1 between predicted and reference strings (0..1)."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): predicted strings.
    references (list of str): reference strings, one per prediction.
    per_example (bool): also return the F1 of every example under ``per_example``.
Returns:
    f1 (float): mean of the per-example F1 scores, in 0..1 (0.0 for no examples).
Examples:
    >>> metric = evaluate.load("hf_recycle/score/metrics/f1")
    >>> metric.compute(predictions=["the cat sat"], references=["a cat sat down"])
    {'f1': 0.5714285714285715}
"""


def token_f1(prediction: str, reference: str) -> float:
    """Token-overlap F1 of one prediction against one reference."""
    pred = str(prediction).lower().split()
    ref = str(reference).lower().split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred)
    recall = common / len(ref)
    return 2 * precision * recall / (precision + recall)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TokenF1(evaluate.Metric):
    """Mean token-overlap F1."""

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
        scores = [token_f1(p, r) for p, r in zip(predictions, references, strict=True)]
        result = {"f1": sum(scores) / len(scores) if scores else 0.0}
        if per_example:
            result["per_example"] = scores
        return result
