"""The ``engine:`` section of a recipe: which scoring engine runs the tasks, and its options.

Example::

    engine: {name: vllm, gpu_memory_utilization: 0.5, max_model_len: 2048, dtype: bfloat16}

``name`` is a registered engine (:data:`~hf_recycle._score.engines.ENGINES`: ``hf``, the
default, or ``vllm``); every other key is one of that engine's options
(:attr:`~hf_recycle._score.engines.ScoringEngine.option_types`). ``--engine NAME`` on the
command line replaces the name (keeping the options when the recipe names the same engine).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from hf_recycle._score.engines import ENGINES, option_problems
from hf_recycle.errors import TaskError

ENGINE_NAMES: tuple[str, ...] = tuple(ENGINES)
EngineName = Literal[ENGINE_NAMES]  # type: ignore[valid-type]


class EngineSpec(BaseModel):
    """A scoring engine and its options (the keys besides ``name``)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: EngineName = "hf"

    @model_validator(mode="after")
    def _options(self) -> EngineSpec:
        problems = option_problems(self.name, self.options)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def options(self) -> dict[str, Any]:
        """The engine's options, as build keywords."""
        return dict(self.model_extra or {})

    def named(self, name: str | None) -> EngineSpec:
        """This spec with engine ``name`` (``--engine``); its options are kept only for the same engine.

        Raises:
            TaskError: ``name`` is no registered engine.
        """
        if name is None or name == self.name:
            return self
        if name not in ENGINES:
            raise TaskError(f"unknown scoring engine '{name}': use one of {', '.join(ENGINE_NAMES)}")
        return EngineSpec(name=name)


def load_engine_spec(recipe_path: str | Path) -> EngineSpec:
    """The ``engine:`` section of a recipe file (``hf`` when it has none); other keys are not read.

    Raises:
        TaskError: The section is invalid, as ``file:line: engine: message``.
    """
    from hf_recycle.recipe import compose_yaml, line_of

    path = Path(recipe_path)
    node, doc = compose_yaml(path.read_text(encoding="utf-8"), str(path))
    raw = doc.get("engine") if isinstance(doc, dict) else None
    if raw is None:
        return EngineSpec()
    try:
        return EngineSpec.model_validate(raw)
    except ValidationError as exc:
        lines = [
            f"{path}:{line_of(node, ('engine', *err['loc']))}: engine: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        ]
        raise TaskError("\n".join(lines)) from None


__all__ = ["ENGINE_NAMES", "EngineSpec", "load_engine_spec"]
