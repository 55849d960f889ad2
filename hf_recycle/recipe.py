"""Recipe schema and loading.

A recipe is one YAML file that says which checkpoints to recycle, how to merge them,
how to search the merge weights, which tasks score a candidate, where the output
goes and where it is pushed. The schema is strict (``extra="forbid"``): a typo is an
error, not a silently ignored key. :meth:`Recipe.from_yaml` reports every problem at
once, each as ``file:line: field: message``. Config objects do no I/O: what needs the
files (task data, metrics, local checkpoint folders) is checked by
:mod:`hf_recycle.preflight`, which ``validate``, ``search`` and ``run`` call before any
download or model load.

Paths: ``data_files`` of a task resolve against the recipe file's folder; ``output.dir``
resolves against the current working directory (like every command-line path).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hf_recycle._merge.methods.registry import METHOD_NAMES, NEEDS_BASE
from hf_recycle._score.engine_spec import EngineSpec
from hf_recycle._score.tasks import TaskSpec
from hf_recycle._search.samplers import SAMPLER_NAMES, SINGLE_OBJECTIVE_SAMPLERS
from hf_recycle.errors import RecipeError

# The merge methods and which mix in a base: from the method registry (importing it loads no torch)
MergeMethodName = Literal[METHOD_NAMES]  # type: ignore[valid-type]
TASK_VECTOR_METHODS = NEEDS_BASE
# The samplers, from their registry (one module each; importing it loads no optuna);
# tests/test_preflight.py checks SINGLE_OBJECTIVE_SAMPLERS against Optuna for every sampler.
SamplerName = Literal[SAMPLER_NAMES]  # type: ignore[valid-type]
BaselineName = Literal["uniform", "best_single", "greedy_soup"]
_GRANULARITY_RE = re.compile(r"^(model|layers:[1-9]\d*)$")
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PLAIN_SPLIT_RE = re.compile(r"^\w+$")  # a bare split name: valid without asking datasets
_SKIP_CROSS_FIELDS = "hf_recycle_skip_cross_fields"
Problem = tuple[tuple[Any, ...], str]  # (location in the recipe data, message)


def _spec(value: str) -> str:
    from hf_recycle.hub.spec import parse_spec

    parse_spec(value)  # raises SpecError (a ValueError) naming the spec
    return value


CheckpointSpecStr = Annotated[str, AfterValidator(_spec)]


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
    device: str = "auto"

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(f"'{value}' is not a device: use auto, cpu, cuda or cuda:N (the GPU's index)")
        return value


class SelectSpec(_Strict):
    """How the returned model is chosen (:mod:`hf_recycle._search.selection`).

    Attributes:
        top: Optimized trials of best search mean that are tested against the best baseline
            (and scored on the validation splits when the tasks have them).
        alpha: Family-wise error rate of those tests (max-T adjusted over the candidates on
            validation, Bonferroni over the trials tried without it).
    """

    top: int = Field(default=5, gt=0)
    alpha: float = Field(default=0.05, gt=0, lt=1)


class RacingSpec(_Strict):
    """How sampled trials are raced on growing prefixes of the search splits (:mod:`hf_recycle._search.racing`).

    Attributes:
        rungs: Increasing shares of each search split at which a trial may be stopped; the
            whole split (1.0) always comes last.
        confidence: One-sided confidence of the optimistic bound that must fall below the best
            trial for a candidate to stop.
        min_examples: The fewest examples of each task's prefix a decision rests on (a rung
            with fewer is skipped).
    """

    rungs: list[float] = Field(default_factory=lambda: [0.125, 0.25, 0.5])
    confidence: float = Field(default=0.8, gt=0.5, lt=1)
    min_examples: int = Field(default=20, ge=2)

    @field_validator("rungs")
    @classmethod
    def _rungs(cls, value: list[float]) -> list[float]:
        example = "e.g. [0.125, 0.25, 0.5]"
        if any(not 0 < r <= 1 for r in value):
            raise ValueError(f"each rung is a share of the search split in (0, 1], {example}")
        if any(b <= a for a, b in zip(value, value[1:], strict=False)):
            raise ValueError(f"the rungs must increase, {example}")
        kept = [r for r in value if r < 1]  # the whole split always comes last
        if not kept:
            raise ValueError(
                f"needs at least one rung below 1 ({example}); to score every example, set racing: false"
            )
        return kept


class SearchSpec(_Strict):
    """How the merge weights are searched (Optuna)."""

    sampler: SamplerName = "cmaes"
    trials: int = Field(default=40, gt=0)
    weights: Literal["simplex", "simplex_box", "nonnegative", "signed"] = "simplex"
    granularity: str = "model"
    objective: Literal["mean", "pareto"] = "mean"
    storage: str | None = None
    study: str | None = None
    baselines: list[BaselineName] = Field(default_factory=lambda: ["uniform", "best_single", "greedy_soup"])
    search_density: bool = False
    pruning: bool = False
    pruning_fraction: float = Field(default=0.25, gt=0, lt=1)
    racing: bool | RacingSpec | None = None  # None: on for objective mean without pruning
    seed: int = 0
    resident: Literal["auto", "device", "host", "disk"] = "auto"
    memory_limit: str | int = "auto"
    select: SelectSpec = Field(default_factory=SelectSpec)
    # sampled trials leave out diverged checkpoints (below this share of the best single on every task,
    # and poisoning the greedy soup): hf_recycle._search.screening
    screen: float | Literal[False] = Field(default=0.5)

    @field_validator("screen")
    @classmethod
    def _screen(cls, value: float | bool) -> float | bool:
        if value is not False and not 0 < value < 1:
            raise ValueError(
                "is the share of the best single score (on every task) below which sampled trials leave a "
                "checkpoint out, between 0 and 1 (e.g. 0.5), or false to keep every checkpoint"
            )
        return value

    @field_validator("memory_limit")
    @classmethod
    def _memory_limit(cls, value: str | int) -> str | int:
        from hf_recycle.units import parse_size

        if value != "auto":
            parse_size(value, "search.memory_limit")  # MergeConfigError (a ValueError) naming the units
        return value

    @field_validator("granularity")
    @classmethod
    def _granularity(cls, value: str) -> str:
        if not _GRANULARITY_RE.match(value):
            raise ValueError("must be 'model' or 'layers:N' with N a positive integer, e.g. layers:4")
        return value

    @property
    def racing_spec(self) -> RacingSpec | None:
        """The racing in effect: ``racing`` unset is on (defaults) for ``mean`` without ``pruning``."""
        if self.racing is None:
            return RacingSpec() if self.objective == "mean" and not self.pruning else None
        if isinstance(self.racing, bool):
            return RacingSpec() if self.racing else None
        return self.racing

    @property
    def layers_per_group(self) -> int | None:
        """N of ``layers:N``, or None for ``model``."""
        return None if self.granularity == "model" else int(self.granularity.split(":", 1)[1])


class OutputSpec(_Strict):
    """Where results and the merged model are written."""

    dir: str | None = None
    max_shard_size: str | int = "5GB"

    @field_validator("max_shard_size")
    @classmethod
    def _size(cls, value: str | int) -> str | int:
        from hf_recycle.units import parse_size

        parse_size(value)  # raises MergeConfigError (a ValueError) naming the accepted units
        return value


class PushSpec(_Strict):
    """Where the merged model is pushed."""

    repo: str
    branch: str = "main"
    private: bool | None = None  # None: private when a source repo (or the Trainer's repo) is private
    create_pr: bool = False
    message: str | None = None

    @field_validator("repo")
    @classmethod
    def _repo(cls, value: str) -> str:
        if not _REPO_ID_RE.match(value):
            raise ValueError(f"'{value}' is not a repo id: write it as org/name")
        return value


class CardSpec(_Strict):
    """The model card: ``template`` is a Jinja file rendered instead of the bundled ``merge.md``.

    A relative path resolves against the recipe file's folder (as the tasks' data files do);
    the variables it is rendered with are listed in ``model_cards/README.md``.
    :mod:`hf_recycle.preflight` checks that the file exists and parses before a run.
    """

    template: str

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is empty: name a Jinja template file, e.g. card: {template: card.md}")
        return value


class Recipe(_Strict):
    """A whole recipe. ``checkpoints`` may be empty only when a Trainer callback supplies them."""

    name: str
    checkpoints: list[CheckpointSpecStr] = Field(default_factory=list)
    base: CheckpointSpecStr | None = None
    endpoint: str | None = None
    merge: MergeSpec = Field(default_factory=MergeSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    tasks: list[TaskSpec] = Field(default_factory=list)
    engine: EngineSpec = Field(default_factory=EngineSpec)  # hf (default) or vllm, with options
    output: OutputSpec = Field(default_factory=OutputSpec)
    push: PushSpec | None = None
    card: CardSpec | None = None  # None: the bundled model card template
    # (source, text) of the YAML it was read from, for file:line in later checks; not part of the value
    _origin: tuple[str, str] | None = PrivateAttr(default=None)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # lists inside: never hashable

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f"'{value}' is not an http(s) URL, e.g. https://huggingface.co")
        return value

    @model_validator(mode="after")
    def _cross_fields(self, info: ValidationInfo) -> Recipe:
        if info.context and info.context.get(_SKIP_CROSS_FIELDS):
            return self  # from_text checks them on the raw data, with their lines
        problems = cross_field_problems(self.model_dump(by_alias=True))
        if problems:
            raise ValueError("; ".join(f"{field_name(loc)}: {msg}" for loc, msg in problems))
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
        parsed = parse_recipe(text, source)
        if parsed.problems:
            raise RecipeError(parsed.format(parsed.problems))
        assert parsed.recipe is not None
        return parsed.recipe

    @property
    def output_dir(self) -> Path:
        """``output.dir``, or ``outputs/<name>`` when unset."""
        return Path(self.output.dir or f"outputs/{self.name}")

    @property
    def origin(self) -> ParsedRecipe | None:
        """The YAML this recipe was read from (its lines locate later problems); None if built in Python."""
        if self._origin is None:
            return None
        import yaml

        source, text = self._origin
        return ParsedRecipe(source, yaml.compose(text), yaml.safe_load(text), self, [])


@dataclass(frozen=True)
class ParsedRecipe:
    """A recipe's YAML and what the schema says of it.

    Attributes:
        source: The file name used in messages.
        node: The composed YAML node tree (it gives each location its line).
        data: The raw mapping.
        recipe: The validated recipe, or None when ``problems`` is not empty.
        problems: Every schema problem as ``(location, message)``.
    """

    source: str
    node: Any
    data: dict[str, Any]
    recipe: Recipe | None
    problems: list[Problem]

    def format(self, problems: list[Problem]) -> str:
        """``problems`` as ``source:line: field: message``, one per line, in file order."""
        return format_problems(problems, self.node, self.source)

    def locate(self, loc: tuple[Any, ...]) -> str:
        """``source:line: field`` of ``loc``."""
        return f"{self.source}:{line_of(self.node, loc)}: {field_name(loc)}"


def parse_recipe(text: str, source: str = "<recipe>") -> ParsedRecipe:
    """Parse and validate recipe YAML ``text``, collecting every schema problem (nothing is raised for them).

    Raises:
        RecipeError: The text is not YAML, or not a mapping.
    """
    node, data = compose_yaml(text, source)
    if not isinstance(data, dict):
        raise RecipeError(f"{source}:1: a recipe is a mapping of keys (name, checkpoints, tasks, ...)")
    problems: list[Problem] = []
    recipe = None
    try:
        recipe = Recipe.model_validate(data, context={_SKIP_CROSS_FIELDS: True})
    except ValidationError as exc:
        problems += validation_problems(exc, data)
    problems += cross_field_problems(data) + _file_problems(data)
    if problems:
        recipe = None
    elif recipe is not None:
        recipe._origin = (source, text)
    return ParsedRecipe(source, node, data, recipe, problems)


def compose_yaml(text: str, source: str) -> tuple[Any, Any]:
    """``(node tree, data)`` of YAML ``text``: the one YAML reader of recipes (and of ``score --tasks``).

    Raises:
        RecipeError: Not YAML, as ``source:line: not valid YAML: problem``.
    """
    import yaml

    try:
        return yaml.compose(text), yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"{mark.line + 1}" if mark else "1"
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"{source}:{line}: not valid YAML: {problem}") from None


def _file_problems(data: Mapping[str, Any]) -> list[Problem]:
    """What a recipe file must hold, though a Recipe built in Python (with injected scorers) may not."""
    problems: list[Problem] = []
    tasks = data.get("tasks")
    if tasks is None or tasks == []:
        problems.append(
            (("tasks",), "no tasks: add at least one task that scores candidates (see the task schema)")
        )
    if data.get("checkpoints") == []:
        problems.append(
            (
                ("checkpoints",),
                "the list is empty: list the checkpoint specs to merge (at least 2, or a glob such as "
                "org/run@step-*), or drop the key when a Trainer callback supplies them",
            )
        )
    return problems


def line_of(node: Any, loc: tuple[Any, ...]) -> int:
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


def field_name(loc: tuple[Any, ...]) -> str:
    """``("tasks", 0, "prompt")`` -> ``tasks[0].prompt``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(recipe)"


def _data_loc(loc: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    """The part of a pydantic location that indexes into ``data`` (drops union member tags like ``str``)."""
    out: list[Any] = []
    for part in loc:
        if isinstance(data, Mapping) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        elif isinstance(data, Mapping) and isinstance(part, str) and not _is_type_tag(part):
            out.append(part)  # a missing key: name it, then stop
            break
        else:
            continue  # a union member tag (str, list[str], function-after[...])
        out.append(part)
    return tuple(out)


def _is_type_tag(part: str) -> bool:
    # a model member of a union (``RacingSpec``) is tagged by its class name; fields are lower case
    return (
        "[" in part or part in ("str", "int", "float", "bool", "list", "dict", "none") or part[:1].isupper()
    )


def validation_problems(exc: ValidationError, data: Any) -> list[Problem]:
    """Every pydantic error as ``(location in data, message)``; union alternatives merged into one."""
    merged: dict[tuple[Any, ...], list[str]] = {}
    for err in exc.errors():
        loc = _data_loc(tuple(err["loc"]), data)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the recipe schema in docs/recipes.md)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        if msg not in merged.setdefault(loc, []):
            merged[loc].append(msg)
    # a union whose value matched one member's shape reports the other members at the parent: keep the deeper error
    deeper = {loc[:i] for loc in merged for i in range(len(loc))}
    return [
        (loc, "; or ".join(msgs))
        for loc, msgs in merged.items()
        if not (loc in deeper and all(m.startswith("Input should be a valid") for m in msgs))
    ]


def split_error(split: str) -> str | None:
    """Why datasets cannot parse split expression ``split``, or None when it can.

    Uses datasets' own parser (what ``load_dataset(split=...)`` runs), offline and
    without loading anything; a bare name like ``train`` does not import datasets.
    """
    if _PLAIN_SPLIT_RE.match(split):
        return None
    from datasets import ReadInstruction

    try:
        ReadInstruction.from_spec(split)
    except (ValueError, TypeError, AssertionError) as exc:
        return str(exc).strip() or type(exc).__name__
    return None


def cross_field_problems(data: Mapping[str, Any]) -> list[Problem]:
    """Checks that span fields, on raw recipe data (tolerant of wrong types elsewhere).

    A task-vector method needs ``base``; ``pareto`` needs at least 2 tasks and a
    multi-objective sampler; task names are unique; splits parse with datasets' split
    syntax (``train``, ``train[:64]``, ``train[10%:]``, ``a+b``); every task or none has a
    ``validation_split``.
    """
    problems: list[Problem] = []
    merge = data.get("merge") if isinstance(data.get("merge"), Mapping) else {}
    search = data.get("search") if isinstance(data.get("search"), Mapping) else {}
    tasks = data.get("tasks") if isinstance(data.get("tasks"), list) else []
    method = merge.get("method")
    if method in TASK_VECTOR_METHODS and data.get("base") is None:
        problems.append(
            (("merge", "method"), f"'{method}' works on task vectors and needs a base: add 'base: <spec>'")
        )
    if search.get("objective") == "pareto" and len(tasks) < 2:
        problems.append(
            (
                ("search", "objective"),
                f"'pareto' needs at least 2 tasks (one objective per task), got {len(tasks)}",
            )
        )
    sampler = search.get("sampler", SearchSpec.model_fields["sampler"].default)
    if search.get("objective") == "pareto" and sampler in SINGLE_OBJECTIVE_SAMPLERS:
        multi = ", ".join(s for s in get_args(SamplerName) if s not in SINGLE_OBJECTIVE_SAMPLERS)
        default = "" if "sampler" in search else " (the default)"
        problems.append(
            (
                ("search", "sampler"),
                f"sampler '{sampler}'{default} optimizes a single objective; objective 'pareto' needs a "
                f"multi-objective sampler: set search.sampler to one of {multi}",
            )
        )
    racing = search.get("racing")
    if racing is not None and racing is not False:
        if search.get("objective") == "pareto":
            problems.append(
                (
                    ("search", "racing"),
                    "racing works with objective 'mean' only (a Pareto search needs every task's full "
                    "score of every trial): set racing: false or objective: mean",
                )
            )
        if search.get("pruning") is True:
            problems.append(
                (
                    ("search", "racing"),
                    "racing and pruning both stop trials early: use one (racing: false for the median "
                    "pruner, or pruning: false)",
                )
            )
    seen: dict[str, int] = {}
    for i, task in enumerate(tasks):
        if not isinstance(task, Mapping):
            continue
        name = task.get("name")
        if isinstance(name, str):
            if name in seen:
                problems.append(
                    ((("tasks", i, "name")), f"task name '{name}' is already used by tasks[{seen[name]}]")
                )
            seen.setdefault(name, i)
        for key in ("search_split", "validation_split", "test_split"):
            split = task.get(key)
            why = split_error(split) if isinstance(split, str) and split.strip() else None
            if why:
                problems.append(
                    (
                        ("tasks", i, key),
                        f"'{split}' is not a split expression ({why}): write a split name with an optional "
                        "slice, like train, train[:64], train[64:], validation[:10%] or train+validation",
                    )
                )
    validated = [
        t.get("name") for t in tasks if isinstance(t, Mapping) and t.get("validation_split") is not None
    ]
    for i, task in enumerate(tasks):
        if validated and isinstance(task, Mapping) and task.get("validation_split") is None:
            problems.append(
                (
                    ("tasks", i),
                    f"task '{task.get('name')}' has no validation_split but task '{validated[0]}' has one: the "
                    "winner is chosen on the validation splits of every task, so give each task one (or none)",
                )
            )
    return problems


def format_problems(problems: list[Problem], node: Any, source: str) -> str:
    """Render problems as ``source:line: field: message``, one per line, in file order."""
    rows = sorted(((line_of(node, loc), field_name(loc), msg) for loc, msg in problems), key=lambda r: r[0])
    noun = "problem" if len(rows) == 1 else "problems"
    lines = [f"{source}: {len(rows)} {noun} in the recipe:"]
    lines += [f"{source}:{line}: {field}: {msg}" for line, field, msg in rows]
    return "\n".join(lines)


def format_validation_error(exc: ValidationError, node: Any, source: str, data: Any = None) -> str:
    """Render every pydantic error as ``source:line: field: message``, one per line."""
    return format_problems(validation_problems(exc, data if data is not None else {}), node, source)
