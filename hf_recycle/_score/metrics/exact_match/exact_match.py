"""Exact match: the fraction of predictions that equal their reference string exactly.

Bundled with hf-recycle and loaded by local path, so it works offline. Strings are
compared as given; hf-recycle's ``generate`` scorer strips surrounding whitespace from
the continuation and the target before calling it.
"""

from hf_recycle._score.bundled_metric import PerExampleMetric


class ExactMatch(PerExampleMetric):
    """Exact string match."""

    score_key = "exact_match"
    summary = "Fraction of predictions identical to their reference (0..1)."
    arguments = """
Args:
    predictions (list of str): predicted strings.
    references (list of str): reference strings, one per prediction.
    per_example (bool): also return the 0/1 score of every example under ``per_example``.
Returns:
    exact_match (float): mean of the per-example scores, in 0..1 (0.0 for no examples).
Examples:
    >>> metric = evaluate.load("hf_recycle/_score/metrics/exact_match")
    >>> metric.compute(predictions=["4", "5"], references=["4", "6"])
    {'exact_match': 0.5}
"""

    def score_example(self, prediction, reference):
        return float(prediction == reference)
