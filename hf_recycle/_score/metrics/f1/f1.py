"""Token F1: the mean over examples of the F1 of predicted vs reference tokens (SQuAD style).

Bundled with hf-recycle and loaded by local path, so it works offline. Unlike the Hub's
label-level ``f1`` (scikit-learn on class ids), this one compares free text, which is
what generation tasks produce: both strings are lower-cased and split on whitespace,
and each example scores ``2·P·R / (P + R)`` over the multiset of shared tokens (1.0 when
both are empty, 0.0 when only one is).
"""

from collections import Counter

from hf_recycle._score.bundled_metric import PerExampleMetric


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


class TokenF1(PerExampleMetric):
    """Mean token-overlap F1."""

    score_key = "f1"
    summary = "Mean token-overlap F1 between predicted and reference strings (0..1)."
    arguments = """
Args:
    predictions (list of str): predicted strings.
    references (list of str): reference strings, one per prediction.
    per_example (bool): also return the F1 of every example under ``per_example``.
Returns:
    f1 (float): mean of the per-example F1 scores, in 0..1 (0.0 for no examples).
Examples:
    >>> metric = evaluate.load("hf_recycle/_score/metrics/f1")
    >>> metric.compute(predictions=["the cat sat"], references=["a cat sat down"])
    {'f1': 0.5714285714285715}
"""

    def score_example(self, prediction, reference):
        return token_f1(prediction, reference)
