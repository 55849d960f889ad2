"""Scoring engines: what runs the candidate model on the tasks.

An engine sits between the live candidate model (whose weights the search rewrites in
place, trial after trial) and the tasks. Its contract (:class:`ScoringEngine`):

- It is built once per run from the tokenizer, the task specs, the split and the folder
  relative data paths resolve against (:meth:`ScoringEngine.build`); it loads and encodes
  the data then, so bad data fails before any model loads. Its options are the recipe's
  ``engine:`` keys (checked against :attr:`ScoringEngine.option_types`) and what the
  caller knows of the model: ``model_dir`` (the folder with its ``config.json`` and
  tokenizer), ``tokenizer_dir`` and ``load_weights`` (whether ``model_dir``'s weights are
  the ones scored; false in a search, where :meth:`ScoringEngine.weights_changed` comes
  before every score). An engine takes the ones it needs.
- :attr:`ScoringEngine.tasks` describes each task as the objective needs it: ``name``,
  ``weight``, ``higher_is_better``, ``num_examples``, in the recipe's order.
- :meth:`ScoringEngine.weights_changed` is called after every rewrite of the model's
  weights, before the next :meth:`ScoringEngine.score`. An engine that runs on its own copy
  of the weights (an inference server) reloads them here; one that runs the live model
  itself has nothing to do.
- :meth:`ScoringEngine.score` returns, per task name, a
  :class:`~hf_recycle._score.scorer.TaskResult` with its per-example scores, for the first
  ``limit`` examples (or ``limit_fraction`` of them) or all; with ``resume`` (the results of
  an earlier shorter call for the same weights) only the examples after those are scored.
  Scores must equal, up to float tolerance, what the reference engine ``hf``
  (:mod:`~hf_recycle._score.engines.transformers`) gives for the same weights.
- An engine with :attr:`ScoringEngine.runs_own_model` runs its own copy of the model (an
  inference server built from ``model_dir``): :meth:`ScoringEngine.score` reads only facts
  (EOS ids, context length) from the model it is given, which is None when the weights
  scored are ``model_dir``'s, so the caller need not load the model itself.

Each engine is one module of this package defining one subclass with a ``name``; the
registry (:data:`ENGINES`) finds them without importing torch.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from hf_recycle.errors import TaskError


class ScoringEngine(ABC):
    """Runs a model on tasks and returns per-example results (see the module docstring)."""

    name: ClassVar[str]
    #: The recipe's ``engine:`` options this engine takes: name -> accepted type(s).
    option_types: ClassVar[Mapping[str, type | tuple[type, ...]]] = {}
    #: The engine runs its own copy of the model, built from ``model_dir`` (see the module docstring).
    runs_own_model: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def build(
        cls,
        tokenizer: Any,
        tasks: Sequence[Any],
        split: str,
        base_dir: str | Path | None = None,
        **options: Any,
    ) -> ScoringEngine:
        """An engine for ``tasks`` (:class:`~hf_recycle._score.tasks.TaskSpec`) on ``split``, data loaded."""

    @property
    @abstractmethod
    def tasks(self) -> Sequence[Any]:
        """Per task, in order: an object with ``name``, ``weight``, ``higher_is_better``, ``num_examples``."""

    def weights_changed(self, model: Any) -> None:  # noqa: B027 - engines on the live model have nothing to do
        """The weights of ``model`` were rewritten: the next :meth:`score` must see them."""

    @abstractmethod
    def score(
        self,
        model: Any,
        *,
        limit: int | None = None,
        limit_fraction: float | None = None,
        resume: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Task name -> :class:`~hf_recycle._score.scorer.TaskResult` of ``model`` on each task."""

    def limits(self, limit: int | None, limit_fraction: float | None) -> dict[str, int | None]:
        """Examples to score per task: ``limit``, or ``limit_fraction`` of each split (at least 1), or all."""
        if limit is not None and limit_fraction is not None:
            raise ValueError("pass limit or limit_fraction, not both")
        out: dict[str, int | None] = {}
        for task in self.tasks:
            if limit_fraction is not None:
                out[task.name] = max(1, math.ceil(limit_fraction * task.num_examples))
            else:
                out[task.name] = limit
        return out

    def close(self) -> None:  # noqa: B027 - most engines hold nothing to release
        """Release what the engine holds (a server, a GPU copy of the weights)."""


def _discover() -> dict[str, type[ScoringEngine]]:
    from hf_recycle.plugins import discover

    return {cls.name: cls for cls in discover(__name__, ScoringEngine)}


#: Registry: engine name -> engine class.
ENGINES: dict[str, type[ScoringEngine]] = _discover()


def get_engine(name: str) -> type[ScoringEngine]:
    """The engine registered as ``name``.

    Raises:
        TaskError: No such engine.
    """
    try:
        return ENGINES[name]
    except KeyError:
        raise TaskError(f"unknown scoring engine '{name}': use one of {', '.join(sorted(ENGINES))}") from None


def option_problems(name: str, options: Mapping[str, Any]) -> list[str]:
    """What is wrong with the recipe options ``options`` of engine ``name`` (empty when nothing is)."""
    if name not in ENGINES:
        return [f"unknown scoring engine '{name}': use one of {', '.join(sorted(ENGINES))}"]
    types = ENGINES[name].option_types
    problems = []
    for key, value in options.items():
        if key not in types:
            accepted = ", ".join(sorted(types)) or "none"
            problems.append(f"engine '{name}' has no option '{key}' (its options: {accepted})")
            continue
        kinds = types[key] if isinstance(types[key], tuple) else (types[key],)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(k.__name__ for k in kinds)
            problems.append(f"engine option '{key}' must be {names}, got {value!r}")
    return problems


def as_engine(scorers: ScoringEngine | Sequence[Any]) -> ScoringEngine:
    """An engine as is, or per-task scorers (``score(model, limit=None, resume=None)`` each) run in turn."""
    if isinstance(scorers, ScoringEngine):
        return scorers
    from hf_recycle._score.engines.transformers import TransformersEngine

    return TransformersEngine(list(scorers))


__all__ = ["ENGINES", "ScoringEngine", "as_engine", "get_engine", "option_problems"]
