"""The ``tasks:`` section of a recipe: one :class:`TaskSpec` per scoring task.

A task names its data (anything :func:`datasets.load_dataset` reads), the split the
search sees and the held-out test split, prompt and target templates over each
example's fields, the kind of scoring and the metric. The config objects do no I/O:
data and metrics are loaded by :class:`hf_recycle._score.scorer.TaskScorer`.

Example::

    tasks:
      - name: addition
        data: {path: json, data_files: data/addition.jsonl}
        search_split: "train[:64]"
        test_split: "train[64:]"
        kind: generate
        prompt: "{question}="
        target: "{answer}"
        metric: exact_match
        max_new_tokens: 8
        stop: ["\\n"]
"""

from __future__ import annotations

import math
import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from hf_recycle._score.kinds import KIND_NAMES, KINDS, field_problems
from hf_recycle.errors import TaskError

# The kinds, from their registry (one module each in hf_recycle/_score/kinds/)
TaskKind = Literal[KIND_NAMES]  # type: ignore[valid-type]
SplitName = Literal["search", "validation", "test"]

DEFAULT_MAX_NEW_TOKENS = 32


def template_fields(template: str) -> tuple[str, ...]:
    """The example fields a ``str.format`` template names, in order, without repeats.

    ``"{question}="`` -> ``("question",)``; ``"{a[0]} {b.c}"`` -> ``("a", "b")``.

    Raises:
        ValueError: The template is malformed (unbalanced braces) or uses a positional
            field (``{}`` or ``{0}``).
    """
    fields: list[str] = []
    for _, field, _, _ in string.Formatter().parse(template):
        if field is None:
            continue
        root = field.split(".", 1)[0].split("[", 1)[0]
        if not root or root.isdigit():
            raise ValueError(
                f"template {template!r} has a positional field '{{{field}}}': name an example field"
            )
        if root not in fields:
            fields.append(root)
    return tuple(fields)


_SLICE_RE = re.compile(r"^(\w+)(?:\[(\d+)?(%?):(\d+)?(%?)\])?$")


def _split_range(expression: str) -> tuple[str, float, float, str] | None:
    """``(split, start, stop, unit)`` of ``name`` or ``name[a:b]`` (``unit`` ``%`` or ``""``; ``name``
    alone is the whole split, unit ``*``); ``None`` for what is not checked cheaply (``a+b``,
    negative bounds, rounding options)."""
    match = _SLICE_RE.match(expression.replace(" ", ""))
    if match is None:
        return None
    name, start, unit_a, stop, unit_b = match.groups()
    if "[" not in expression:
        return name, 0.0, math.inf, "*"
    if start is not None and stop is not None and unit_a != unit_b:
        return None
    unit = unit_a or unit_b
    return name, float(start or 0), float(stop) if stop is not None else (100.0 if unit else math.inf), unit


def split_overlap(a: str, b: str | None) -> str | None:
    """How split expressions ``a`` and ``b`` overlap (``"rows 60 to 63 of 'train' are in both"``), or ``None`` when
    they are disjoint or cannot be compared without loading the data (``a+b``, mixed units)."""
    if b is None:
        return None
    if a.replace(" ", "") == b.replace(" ", ""):
        return "the same examples"
    ra, rb = _split_range(a), _split_range(b)
    if ra is None or rb is None or ra[0] != rb[0]:
        return None
    if "*" in (ra[3], rb[3]):
        return f"the whole split '{ra[0]}' holds both"
    if ra[3] != rb[3]:
        return None
    low, high = max(ra[1], rb[1]), min(ra[2], rb[2])
    if low >= high:
        return None
    if ra[3] == "%":
        return f"{ra[0]}[{low:g}%:{high:g}%] is in both"
    rows = f"rows {low:g} onward" if math.isinf(high) else f"rows {low:g} to {high - 1:g}"
    return f"{rows} of '{ra[0]}' are in both"


class DataSpec(BaseModel):
    """Where a task's examples come from: the arguments of :func:`datasets.load_dataset`.

    Attributes:
        path: A builder name for local files (``json``, ``csv``, ``parquet``, ``text``), a
            local folder, or a Hub dataset id (``org/name``).
        name: The dataset configuration name, if any.
        data_files: Local data files (a path, a list, or a split -> path(s) mapping);
            relative paths resolve against the recipe's folder.
        data_dir: A folder of data files, relative paths resolving like ``data_files``.
        revision: Hub revision (branch, tag or commit sha) of a Hub dataset.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(min_length=1)
    name: str | None = None
    data_files: str | list[str] | dict[str, str | list[str]] | None = None
    data_dir: str | None = None
    revision: str | None = None


class LmEvalSpec(BaseModel):
    """An lm-evaluation-harness task (kind ``lm_eval``): lm-eval builds its requests and metrics.

    Attributes:
        task: The lm-eval task name (``arc_easy``), found offline in lm-eval's registry or
            under ``include_path``. One task, not a group or a tag.
        num_fewshot: Few-shot examples per request, as ``lm_eval --num_fewshot`` sets it (a
            task whose YAML says 0 keeps 0); ``None``: the task's own default, else 0.
        include_path: A folder of your own task YAMLs (lm-eval's ``--include_path``); a
            relative path resolves against the recipe's folder.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str = Field(min_length=1)
    num_fewshot: int | None = Field(default=None, ge=0)
    include_path: str | None = None


class TaskSpec(BaseModel):
    """One scoring task of a recipe.

    Attributes:
        name: Unique name of the task; keys the scores.
        data: Where the examples come from; a bare string is ``{path: <string>}``. Required,
            like ``prompt`` and ``target``, except by ``lm_eval`` (which takes none of them).
        search_split: Examples the search scores candidates on, in datasets' split
            syntax (``train``, ``train[:64]``, ``validation[:10%]``).
        test_split: Held-out examples for the final report; never seen by the search.
        validation_split: Held-out examples the returned model is chosen on (the best
            trials of the search and the baselines are scored on them); never seen by the
            optimizer. Every task of a recipe has one, or none does. It must not overlap the
            search or test split: slices of one split (``train[:64]``, ``train[64:96]``) are
            checked, other expressions are the user's responsibility.
        kind: ``generate`` (greedy continuation compared with the target by the metric),
            ``choice`` (the option of highest log-likelihood; accuracy), ``loglikelihood``
            (mean summed log-probability of the target after the prompt; higher is better)
            or ``perplexity`` (of the target tokens after the prompt; lower is better), or
            ``lm_eval`` (an lm-evaluation-harness task: ``lm_eval`` names it, ``metric`` is
            lm-eval's metric key such as ``acc,none``, the splits slice its evaluation
            documents: ``docs[:200]``; no ``data``, ``prompt`` or ``target``).
        lm_eval: For ``lm_eval``: the task (:class:`LmEvalSpec`).
        prompt: ``str.format`` template over the example's fields, e.g. ``"{question}="``.
        target: Template of the expected continuation. For ``choice`` it renders the gold
            option: its text, or (when the template is a single integer field) its index.
        options: For ``choice``: the name of the example field holding the list of options.
        chat_template: Wrap the prompt as a user turn in the tokenizer's chat template.
        metric: For ``generate``/``choice``: ``exact_match``, ``accuracy`` or ``f1``
            (bundled, offline), any other ``evaluate`` module name, or a path to your own
            ``evaluate`` module. Defaults to ``exact_match`` / ``accuracy``.
        metric_key: Which key of the metric's result is the score (default: the key equal
            to the metric's name, or its only numeric value).
        higher_is_better: Direction of the score; defaults to ``False`` for ``perplexity``
            and ``True`` otherwise. Set it for an external metric where lower is better.
        max_new_tokens: For ``generate``: the most tokens generated (default 32).
        stop: For ``generate``: strings that end the continuation (cut before them).
        weight: Weight of the task in the macro-average (> 0).
        batch_size: Examples per batch, or ``auto``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    data: DataSpec | None  # required, except by a kind without templates (see _kind_without_templates)
    search_split: str = "train"
    test_split: str | None = None
    validation_split: str | None = None
    kind: TaskKind = "generate"
    lm_eval: LmEvalSpec | None = None
    prompt: str | None
    target: str | None
    options: str | None = None
    chat_template: bool = False
    metric: str | None = None
    metric_key: str | None = None
    higher_is_better: bool | None = None
    max_new_tokens: int | None = Field(default=None, gt=0)
    stop: tuple[str, ...] = ()
    weight: float = Field(default=1.0, gt=0)
    batch_size: int | Literal["auto"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _kind_without_templates(cls, value: Any) -> Any:
        """A kind without templates (``lm_eval``) takes no data, prompt or target: absent means None."""
        kind = value.get("kind") if isinstance(value, dict) else None
        if isinstance(kind, str) and kind in KINDS and not KINDS[kind].uses_templates:
            value = {"data": None, "prompt": None, "target": None, **value}
        return value

    @field_validator("data", mode="before")
    @classmethod
    def _data_shorthand(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_shorthand(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("stop")
    @classmethod
    def _stop_not_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(s == "" for s in value):
            raise ValueError("stop strings must not be empty")
        return value

    @field_validator("search_split", "test_split", "validation_split")
    @classmethod
    def _split_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("a split must not be empty: write e.g. 'train' or 'train[:64]'")
        return value

    @field_validator("prompt", "target")
    @classmethod
    def _template_parses(cls, value: str | None) -> str | None:
        if value is not None:
            template_fields(value)
        return value

    @field_validator("weight")
    @classmethod
    def _weight_finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("weight must be a finite number > 0")
        return value

    @field_validator("batch_size")
    @classmethod
    def _batch_size_positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value <= 0:
            raise ValueError("batch_size must be a positive integer or 'auto'")
        return value

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> TaskSpec:
        problems = field_problems(self)
        if self.test_split is not None and self.test_split.replace(" ", "") == self.search_split.replace(
            " ", ""
        ):
            problems.append("test_split equals search_split: the test split must be held out")
        if self.validation_split is not None:
            for key in ("search_split", "test_split"):
                overlap = split_overlap(self.validation_split, getattr(self, key))
                if overlap:
                    problems.append(
                        f"validation_split '{self.validation_split}' overlaps {key} '{getattr(self, key)}' "
                        f"({overlap}): the validation split must be held out from the search and the test"
                    )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def metric_name(self) -> str | None:
        """The metric this task uses (its default for the kind when unset); None for likelihood kinds."""
        return self.metric or KINDS[self.kind].default_metric

    @property
    def larger_is_better(self) -> bool:
        """Direction of this task's score: True unless perplexity (or, for ``lm_eval``, lm-eval's
        metric says lower is better) or told otherwise."""
        if self.higher_is_better is not None:
            return self.higher_is_better
        return KINDS[self.kind].direction(self)

    @property
    def generation_length(self) -> int:
        """``max_new_tokens``, or its default."""
        return self.max_new_tokens or DEFAULT_MAX_NEW_TOKENS

    def split_expression(self, split: SplitName) -> str:
        """The datasets split expression of ``split`` (``"search"``, ``"validation"`` or ``"test"``).

        Raises:
            TaskError: ``split`` is ``"test"`` or ``"validation"`` and the task has no such
                split, or ``split`` is none of the names.
        """
        if split == "search":
            return self.search_split
        if split == "validation":
            if self.validation_split is None:
                raise TaskError(
                    f"task '{self.name}' has no validation_split: add one (e.g. validation_split: "
                    '"train[64:96]"), held out from the search and test splits'
                )
            return self.validation_split
        if split == "test":
            if self.test_split is None:
                raise TaskError(
                    f"task '{self.name}' has no test_split: add one (e.g. test_split: \"train[64:]\") "
                    "or score the search split"
                )
            return self.test_split
        raise TaskError(f"split must be 'search', 'validation' or 'test', got {split!r}")


def _unique_names(tasks: list[TaskSpec]) -> list[TaskSpec]:
    seen: set[str] = set()
    for task in tasks:
        if task.name in seen:
            raise ValueError(f"task name '{task.name}' is used twice: task names must be unique")
        seen.add(task.name)
    return tasks


# A list of tasks as the recipe schema embeds it: at least one task, names unique.
TaskList = Annotated[list[TaskSpec], Field(min_length=1), AfterValidator(_unique_names)]


def load_tasks(recipe_path: str | Path) -> list[TaskSpec]:
    """Read and validate the ``tasks:`` section of a YAML recipe (other top-level keys are ignored).

    Args:
        recipe_path: The recipe file.

    Returns:
        The tasks, in file order.

    Raises:
        TaskError: The file is missing or not YAML, has no ``tasks:`` list, or some tasks
            are invalid; the message lists every problem as ``file:line: tasks[i].field: message``.
    """
    from hf_recycle.errors import RecipeError
    from hf_recycle.recipe import compose_yaml, field_name, line_of

    path = Path(recipe_path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise TaskError(f"recipe file '{path}' does not exist: pass the path of a YAML recipe") from exc
    except OSError as exc:
        raise TaskError(f"cannot read recipe file '{path}': {exc}") from exc
    try:
        node, doc = compose_yaml(text, str(path))
    except RecipeError as exc:
        raise TaskError(str(exc)) from None
    if not isinstance(doc, dict) or "tasks" not in doc:
        raise TaskError(
            f"{path}: no 'tasks:' section: add a list of tasks (see the task schema in docs/scoring.md)"
        )
    raw = doc["tasks"]
    if not isinstance(raw, list) or not raw:
        raise TaskError(f"{path}:{line_of(node, ('tasks',))}: 'tasks' must be a non-empty list of tasks")

    problems: list[str] = []
    tasks: list[TaskSpec] = []
    for i, item in enumerate(raw):
        try:
            tasks.append(TaskSpec.model_validate(item))
        except ValidationError as exc:
            for err in exc.errors():
                loc = ("tasks", i, *err["loc"])
                message = err["msg"].removeprefix("Value error, ")
                problems.append(f"{path}:{line_of(node, loc)}: {field_name(loc)}: {message}")
    if not problems:
        try:
            _unique_names(tasks)
        except ValueError as exc:
            problems.append(f"{path}:{line_of(node, ('tasks',))}: tasks: {exc}")
    if problems:
        noun = "problem" if len(problems) == 1 else "problems"
        raise TaskError(
            f"{path}: {len(problems)} {noun} in 'tasks':\n" + "\n".join(f"  {p}" for p in problems)
        )
    return tasks
