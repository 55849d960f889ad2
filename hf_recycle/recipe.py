"""Recipe schema and loading.

A recipe is one YAML file that says which checkpoints to recycle, how to merge them,
how to search the merge weights, which tasks score a candidate, where the output
goes and where it is pushed. The schema is strict (``extra="forbid"``): a typo is an
error, not a silently ignored key. :meth:`Recipe.from_yaml` reports every problem at
once, each as ``file:line: field: message``. Config objects do no I/O.

Paths: ``data_files`` of a task resolve against the recipe file's folder; ``output.dir``
resolves against the current working directory (like every command-line path).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hf_recycle.errors import RecipeError
from hf_recycle.score.tasks import TaskSpec

MergeMethodName = Literal["linear", "task_arithmetic", "ties", "dare_linear", "dare_ties"]
TASK_VECTOR_METHODS = ("task_arithmetic", "ties", "dare_linear", "dare_ties")
SamplerName = Literal["cmaes", "tpe", "gp", "random", "nsga2"]
BaselineName = Literal["uniform", "best_single", "greedy_soup"]
_GRANULARITY_RE = re.compile(r"^(model|layers:[1-9]\d*)$")
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class MergeSpec(_Strict):
    """How checkpoints are combined (see DESIGN.md, merge semantics)."""

    method: MergeMethodName = "linear"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    density: float | None = Field(default=None, gt=0, le=1)
    lambda_: float = Field(default=1.0, alias="lambda")
    normalize: bool | None = None
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"


class SearchSpec(_Strict):
    """How the merge weights are searched (Optuna)."""

    sampler: SamplerName = "cmaes"
    trials: int = Field(default=40, gt=0)
    weights: Literal["simplex", "nonnegative", "signed"] = "simplex"
    granularity: str = "model"
    objective: Literal["mean", "pareto"] = "mean"
    storage: str | None = None
    study: str | None = None
    baselines: list[BaselineName] = Field(default_factory=lambda: ["uniform", "best_single", "greedy_soup"])
    search_density: bool = False
    pruning: bool = False
    pruning_fraction: float = Field(default=0.25, gt=0, lt=1)
    seed: int = 0

    @field_validator("granularity")
    @classmethod
    def _granularity(cls, value: str) -> str:
        if not _GRANULARITY_RE.match(value):
            raise ValueError("must be 'model' or 'layers:N' with N a positive integer, e.g. layers:4")
        return value

    @property
    def layers_per_group(self) -> int | None:
        """N of ``layers:N``, or None for ``model``."""
        return None if self.granularity == "model" else int(self.granularity.split(":", 1)[1])


class OutputSpec(_Strict):
    """Where results and the merged model are written."""

    dir: str | None = None
    max_shard_size: str = "5GB"


class PushSpec(_Strict):
    """Where the merged model is pushed."""

    repo: str
    branch: str = "main"
    private: bool = False
    create_pr: bool = False
    message: str | None = None

    @field_validator("repo")
    @classmethod
    def _repo(cls, value: str) -> str:
        if not _REPO_ID_RE.match(value):
            raise ValueError(f"'{value}' is not a repo id: write it as org/name")
        return value


class Recipe(_Strict):
    """A whole recipe. ``checkpoints`` may be empty only when a Trainer callback supplies them."""

    name: str
    checkpoints: list[str] = Field(default_factory=list)
    base: str | None = None
    endpoint: str | None = None
    merge: MergeSpec = Field(default_factory=MergeSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    tasks: list[TaskSpec] = Field(default_factory=list)
    output: OutputSpec = Field(default_factory=OutputSpec)
    push: PushSpec | None = None

    @field_validator("checkpoints")
    @classmethod
    def _specs(cls, value: list[str]) -> list[str]:
        from hf_recycle.hub.spec import parse_spec

        for spec in value:
            parse_spec(spec)  # raises SpecError (a ValueError) naming the spec
        return value

    @model_validator(mode="after")
    def _cross_fields(self) -> Recipe:
        if self.merge.method in TASK_VECTOR_METHODS and self.base is None:
            raise ValueError(f"merge.method '{self.merge.method}' needs a base: add 'base: <spec>'")
        if self.search.objective == "pareto" and len(self.tasks) < 2:
            raise ValueError("search.objective 'pareto' needs at least 2 tasks (one objective per task)")
        names = [t.name for t in self.tasks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"task names must be unique; repeated: {', '.join(dupes)}")
        return self

    # --- loading ------------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path: str | Path) -> Recipe:
        """Load and validate a recipe file, reporting every problem at once.

        Raises:
            RecipeError: listing each problem as ``file:line: field: message``.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RecipeError(f"recipe file '{path}' does not exist") from None
        return cls.from_text(text, source=str(path))

    @classmethod
    def from_text(cls, text: str, source: str = "<recipe>") -> Recipe:
        """Validate recipe YAML ``text``; ``source`` names it in messages."""
        import yaml

        try:
            node = yaml.compose(text)
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f"{mark.line + 1}" if mark else "1"
            problem = getattr(exc, "problem", None) or str(exc)
            raise RecipeError(f"{source}:{line}: not valid YAML: {problem}") from None
        if not isinstance(data, dict):
            raise RecipeError(f"{source}:1: a recipe is a mapping of keys (name, checkpoints, tasks, ...)")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise RecipeError(format_validation_error(exc, node, source)) from None

    @property
    def output_dir(self) -> Path:
        """``output.dir``, or ``outputs/<name>`` when unset."""
        return Path(self.output.dir or f"outputs/{self.name}")


def _line_of(node: Any, loc: tuple[Any, ...]) -> int:
    """1-based line of the YAML node at ``loc`` (or of its nearest existing parent)."""
    import yaml

    line = node.start_mark.line + 1 if node is not None else 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    line = key.start_mark.line + 1
                    node = value
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def format_validation_error(exc: ValidationError, node: Any, source: str) -> str:
    """Render every pydantic error as ``source:line: field: message``, one per line."""
    lines = [f"{source}: {exc.error_count()} problem(s) in the recipe:"]
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # pydantic adds the union member / model name to some locations; drop non-field parts
        loc = tuple(p for p in loc if p not in ("TaskSpec",))
        field = ".".join(str(p) for p in loc) or "(recipe)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see DESIGN.md for the schema)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"{source}:{_line_of(node, loc)}: {field}: {msg}")
    return "\n".join(lines)
