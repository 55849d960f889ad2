"""The base of the evaluate modules bundled in ``hf_recycle/_score/metrics/``.

``evaluate.load(path)`` copies a module's script into its own cache and imports it from
there, so a bundled script cannot import a sibling file by a relative import. It can
import an installed package, though (evaluate only checks that the package imports), and
``hf_recycle`` is always installed when its bundled metrics load. The shared part lives
here: each script defines one :class:`PerExampleMetric` subclass that scores one example.

evaluate takes the first concrete ``EvaluationModule`` subclass of a script as its metric;
:class:`PerExampleMetric` is abstract, so the script's own class is the one it takes.
"""

from __future__ import annotations

import abc
from typing import Any

import datasets
import evaluate


class PerExampleMetric(evaluate.Metric, metaclass=abc.ABCMeta):
    """A metric that is the mean of one score per example, and returns those scores on request.

    ``compute(predictions=..., references=..., per_example=True)`` adds the list of
    per-example scores under ``per_example`` (what the search's paired bootstrap needs).

    Subclasses set:
        score_key: The result key of the mean (``"exact_match"``).
        value_type: The ``datasets`` type of predictions and references (``"string"``, ``"int64"``).
        summary: One-line description of the metric.
        arguments: The ``compute`` arguments and result, with an example (evaluate's
            ``inputs_description``).
    and implement :meth:`score_example`.
    """

    score_key: str
    value_type: str = "string"
    summary: str
    arguments: str

    @abc.abstractmethod
    def score_example(self, prediction: Any, reference: Any) -> float:
        """The score of one prediction against its reference."""

    def _info(self) -> evaluate.MetricInfo:
        value = datasets.Value(self.value_type)
        return evaluate.MetricInfo(
            description=self.summary,
            citation="",
            inputs_description=self.arguments,
            features=datasets.Features({"predictions": value, "references": value}),
        )

    def _compute(self, predictions, references, per_example: bool = False) -> dict[str, Any]:
        scores = [float(self.score_example(p, r)) for p, r in zip(predictions, references, strict=True)]
        result: dict[str, Any] = {self.score_key: sum(scores) / len(scores) if scores else 0.0}
        if per_example:
            result["per_example"] = scores
        return result
