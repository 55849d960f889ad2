"""Metrics through :mod:`evaluate`: bundled modules by local path, anything else by name or path.

``exact_match``, ``accuracy`` and ``f1`` ship inside the package
(``hf_recycle/_score/metrics/<name>/<name>.py``) and load by local path, so they work
offline. Any other name goes to ``evaluate.load(name)`` (online, or from its cache); a
path to a user's own evaluate module works too. Loaded modules are cached per process.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hf_recycle.errors import TaskError

logger = logging.getLogger(__name__)

BUNDLED_DIR = Path(__file__).parent / "metrics"
BUNDLED_METRICS = ("exact_match", "accuracy", "f1")

_MODULES: dict[str, Any] = {}


def metric_location(name: str, base_dir: str | Path | None = None) -> str:
    """Where ``evaluate.load`` finds metric ``name``: a bundled or local path, else the name itself.

    A relative path is tried against ``base_dir`` (the recipe's folder), then the
    current folder.
    """
    if name in BUNDLED_METRICS:
        return str(BUNDLED_DIR / name / f"{name}.py")
    candidates = [Path(name)]
    if base_dir is not None and not Path(name).is_absolute():
        candidates.insert(0, Path(base_dir) / name)
    for candidate in candidates:
        if candidate.exists():
            return str(candidate.resolve())
    return name


def load_evaluate_module(name: str, base_dir: str | Path | None = None, task: str = "?"):
    """The ``evaluate`` module for ``name`` (cached per process).

    Raises:
        TaskError: No such metric (neither bundled, nor a local path, nor loadable by name).
    """
    location = metric_location(name, base_dir)
    if location in _MODULES:
        return _MODULES[location]
    import evaluate

    try:
        module = evaluate.load(location, keep_in_memory=True)
    except Exception as exc:  # evaluate raises FileNotFoundError, ConnectionError, ImportError...
        raise TaskError(
            f"task '{task}': unknown metric '{name}': use one of {', '.join(BUNDLED_METRICS)} (bundled), "
            "the name of an evaluate module (needs the network or its cache), or the path of your own "
            f"evaluate module ({type(exc).__name__}: {exc})"
        ) from exc
    _MODULES[location] = module
    return module


class TaskMetric:
    """A loaded metric that returns the aggregate and the per-example scores.

    Bundled metrics (and user modules whose ``_compute`` accepts ``per_example``) give
    both in one call. For any other module the aggregate is one ``compute`` over all
    examples and each per-example score one ``compute`` over that example alone.

    Args:
        name: Metric name or path.
        task: Task name, for messages.
        key: Key of the metric's result that holds the score (default: the metric's
            name, else its only numeric value).
        base_dir: Folder that relative metric paths resolve against.
    """

    def __init__(
        self, name: str, task: str, key: str | None = None, base_dir: str | Path | None = None
    ) -> None:
        self.name = name
        self.task = task
        self.module = load_evaluate_module(name, base_dir, task)
        self._key = key
        self._per_example = "per_example" in inspect.signature(self.module._compute).parameters

    def _pick(self, result: dict[str, Any]) -> float:
        if self._key is not None:
            if self._key not in result:
                raise TaskError(
                    f"task '{self.task}': metric '{self.name}' returned no key '{self._key}' "
                    f"(it returned {sorted(result)}): fix metric_key"
                )
            return float(result[self._key])
        names = {self.name, Path(self.name).stem, getattr(self.module, "name", None)}
        for key in result:
            if key in names:
                return float(result[key])
        numeric = [k for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(numeric) == 1:
            return float(result[numeric[0]])
        raise TaskError(
            f"task '{self.task}': metric '{self.name}' returned several values {sorted(result)}: "
            "set metric_key to the one to optimize"
        )

    def compute(self, predictions: Sequence[Any], references: Sequence[Any]) -> tuple[float, list[float]]:
        """Score ``predictions`` against ``references``.

        Returns:
            ``(aggregate, per_example)`` on the metric's own scale.

        Raises:
            TaskError: The metric rejects the inputs or returns no usable value.
        """
        try:
            if self._per_example:
                result = self.module.compute(
                    predictions=list(predictions), references=list(references), per_example=True
                )
                per_example = [float(v) for v in result.pop("per_example")]
                value = self._pick(result)
            else:
                value = self._pick(
                    self.module.compute(predictions=list(predictions), references=list(references))
                )
                per_example = [
                    self._pick(self.module.compute(predictions=[p], references=[r]))
                    for p, r in zip(predictions, references, strict=True)
                ]
        except TaskError:
            raise
        except Exception as exc:
            raise TaskError(
                f"task '{self.task}': metric '{self.name}' failed on this task's predictions: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not math.isfinite(value):
            logger.warning("task '%s': metric '%s' returned %s", self.task, self.name, value)
        return value, per_example
