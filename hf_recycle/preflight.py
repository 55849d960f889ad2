"""Checks of a recipe against the files it names, before anything is downloaded or loaded.

The schema (:mod:`hf_recycle.recipe`) checks what the YAML says and does no I/O. This
module checks what needs the machine:

- each task's local data files exist (relative paths resolve against the recipe's
  folder, as the scorer loads them), the splits it names are among them, and their
  first row holds every field the prompt, target and options name;
- each metric is bundled, a local file or in the evaluate cache (a warning when it
  will be downloaded, an error when the Hub is offline);
- each ``lm_eval`` task exists, offline (in lm-eval's registry or under its ``include_path``),
  and reports the metric key the recipe names;
- local checkpoint folders exist and hold weights;
- the trials cover the baselines when the specs say how many checkpoints there are.
  A glob (``org/run@step-*``) is counted only by resolving it: :func:`check_resolved`
  runs after the resolve and before any download;
- the model card template a recipe names (``card: {template: ...}``) exists, is valid
  Jinja and uses only the card's variables.

``hf-recycle validate`` runs :func:`check_file`; ``search`` and ``run`` run
:func:`load_recipe` (a file) or :func:`check_recipe` (a Recipe object), then
:func:`check_resolved`. Every problem is reported at once, as ``file:line: field: message``.
"""

from __future__ import annotations

import csv
import difflib
import glob
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hf_recycle._score.kinds import KINDS
from hf_recycle._score.tasks import TaskSpec, template_fields
from hf_recycle.errors import RecipeError, SearchError, SpecError
from hf_recycle.recipe import ParsedRecipe, Problem, Recipe, SearchSpec, field_name, parse_recipe

logger = logging.getLogger(__name__)

__all__ = [
    "PreflightReport",
    "check_file",
    "load_recipe",
    "check_recipe",
    "check_resolved",
    "baseline_trials",
]

FILE_BUILDERS = ("json", "csv", "parquet", "text")  # datasets' builders that read local data files
_JSON_SUFFIXES = (".json", ".jsonl")
_HEAD_BYTES = 1 << 20  # how much of a JSON file is read to find its first row
_LOCAL_PREFIXES = ("./", "../", "/", "~")
_warned: set[str] = set()  # warnings logged by this process (search and run check a recipe twice)


@dataclass
class PreflightReport:
    """What the checks found in one recipe.

    Attributes:
        recipe: The recipe, or None when the schema refused it.
        parsed: Its YAML (which gives each problem its line), or None for a recipe built in Python.
        errors: Problems that stop a run, as ``(location, message)``; schema problems first.
        warnings: Problems that may not (a metric that must be downloaded, no checkpoints listed).
    """

    recipe: Recipe | None
    parsed: ParsedRecipe | None
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def where(self, loc: tuple[Any, ...]) -> str:
        """``file:line: field`` of ``loc`` (``recipe 'name': field`` without a file)."""
        if self.parsed is not None:
            return self.parsed.locate(loc)
        return f"recipe '{self.recipe.name if self.recipe else '?'}': {field_name(loc)}"

    def error_text(self) -> str:
        """Every error, one per line in file order, under a heading line."""
        if self.parsed is not None:
            return self.parsed.format(self.errors)
        noun = "problem" if len(self.errors) == 1 else "problems"
        return "\n".join(
            [f"{len(self.errors)} {noun} in the recipe:"]
            + [f"{self.where(loc)}: {msg}" for loc, msg in self.errors]
        )

    def warning_lines(self) -> list[str]:
        """Every warning as ``file:line: field: warning: message``."""
        return [f"{self.where(loc)}: warning: {msg}" for loc, msg in self.warnings]

    def raise_errors(self) -> Recipe:
        """Log the warnings (once per process); raise the errors, else return the recipe.

        Raises:
            RecipeError: Listing every error as ``file:line: field: message``.
        """
        for line in self.warning_lines():
            if line not in _warned:
                _warned.add(line)
                logger.warning("%s", line)
        if self.errors:
            raise RecipeError(self.error_text())
        assert self.recipe is not None
        return self.recipe


@dataclass
class _Parts:
    """The parts of a recipe that the checks read, each present only when the schema accepts it."""

    checkpoints: list[str] | None
    base: str | None
    search: SearchSpec | None
    tasks: list[tuple[int, TaskSpec]]

    @classmethod
    def of_data(cls, data: Mapping[str, Any]) -> _Parts:
        ckpts = data.get("checkpoints")
        ok = isinstance(ckpts, list) and all(isinstance(c, str) for c in ckpts)
        try:
            search = SearchSpec.model_validate(data.get("search") or {})
        except ValidationError:
            search = None
        tasks = []
        for i, raw in enumerate(data.get("tasks") if isinstance(data.get("tasks"), list) else []):
            try:
                tasks.append((i, TaskSpec.model_validate(raw)))
            except ValidationError:
                continue  # the schema reported it
        base = data.get("base")
        return cls(ckpts if ok else None, base if isinstance(base, str) else None, search, tasks)


# --- entry points -----------------------------------------------------------------------------


def check_file(
    path: str | Path,
    *,
    base_dir: str | Path | None = None,
    trials: int | None = None,
    for_search: bool = False,
    tasks: bool = True,
) -> PreflightReport:
    """Check a recipe file: its schema and everything above, collected into one report.

    Args:
        path: The recipe file.
        base_dir: Folder that relative task paths resolve against (default: the recipe's folder).
        trials: The trial budget to check instead of ``search.trials`` (``--trials``).
        for_search: Missing or too few checkpoints are errors (a search), not warnings
            (``validate``: a Trainer callback may add them).
        tasks: Check the tasks' data and metrics (off when scorers are given in Python).

    Raises:
        RecipeError: The file does not exist or is not YAML (the other problems are in the report).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"recipe file '{path}' does not exist") from None
    parsed = parse_recipe(text, str(path))
    report = PreflightReport(parsed.recipe, parsed, list(parsed.problems))
    base = Path(base_dir) if base_dir is not None else path.resolve().parent
    parts = _Parts.of_data(parsed.data)
    _check_checkpoints(report, parts, "checkpoints" in parsed.data, trials, for_search)
    card = parsed.data.get("card")
    if isinstance(card, Mapping) and isinstance(card.get("template"), str) and card["template"].strip():
        _check_card_template(report, card["template"], base)
    if tasks:
        for i, task in parts.tasks:
            _check_task(report, i, task, base)
    return report


def load_recipe(
    path: str | Path, *, base_dir: str | Path | None = None, trials: int | None = None, tasks: bool = True
) -> Recipe:
    """Load a recipe file for a search or a run: every problem at once, before anything is downloaded.

    Raises:
        RecipeError: Listing every problem as ``file:line: field: message``.
    """
    return check_file(path, base_dir=base_dir, trials=trials, for_search=True, tasks=tasks).raise_errors()


def check_recipe(recipe: Recipe, *, base_dir: str | Path) -> None:
    """Check the tasks' data and metrics of a Recipe object (with lines when it was read from a file).

    The number of checkpoints and the trial budget are checked by :func:`check_resolved`.

    Raises:
        RecipeError: Listing every problem.
    """
    report = PreflightReport(recipe, recipe.origin)
    if recipe.card is not None:
        _check_card_template(report, recipe.card.template, Path(base_dir))
    for i, task in enumerate(recipe.tasks):
        _check_task(report, i, task, Path(base_dir))
    report.raise_errors()


def check_resolved(recipe: Recipe, n_checkpoints: int, *, trials: int | None = None) -> None:
    """After resolving the specs, before any download: at least 2 checkpoints, trials for the baselines.

    Raises:
        SearchError: Too few checkpoints or trials, located in the recipe file when there is one.
    """
    report = PreflightReport(recipe, recipe.origin)
    if n_checkpoints < 2:
        report.errors.append(
            (
                ("checkpoints",),
                f"a merge search needs at least 2 checkpoints, the recipe's specs give {n_checkpoints}: "
                "add checkpoints",
            )
        )
    else:
        report.errors += [p for p in [_budget_problem(recipe.search, n_checkpoints, trials)] if p]
    if report.errors:
        raise SearchError(report.error_text())


def baseline_trials(n_checkpoints: int, baselines: Sequence[str]) -> int:
    """The most trials the baselines can take with ``n_checkpoints`` (>= 2) checkpoints."""
    from hf_recycle._search.space import SearchSpace
    from hf_recycle._search.study import StudyConfig

    config = StudyConfig(
        space=SearchSpace(n_checkpoints),
        checkpoints=[],
        tasks=[],
        directions=[],
        baselines=tuple(dict.fromkeys(baselines)),
    )
    return config.baseline_trials()


# --- checkpoints and trials ---------------------------------------------------------------------


def _budget_problem(search: SearchSpec, n_checkpoints: int, trials: int | None) -> Problem | None:
    n_trials = search.trials if trials is None else int(trials)
    needed = baseline_trials(n_checkpoints, search.baselines)
    if 0 < n_trials < needed:  # trials <= 0 is refused by the search with its own message
        return (
            ("search", "trials"),
            f"trials ({n_trials}) is below the {needed} trials the baselines may take with {n_checkpoints} "
            f"checkpoints ({', '.join(dict.fromkeys(search.baselines))}): raise search.trials (or --trials), or "
            "drop baselines in search.baselines",
        )
    return None


def _check_checkpoints(
    report: PreflightReport, parts: _Parts, listed: bool, trials: int | None, for_search: bool
) -> None:
    from hf_recycle.hub.spec import parse_spec

    count: int | None = 0 if parts.checkpoints is not None else None
    named = [(("checkpoints", i), s) for i, s in enumerate(parts.checkpoints or [])]
    for loc, raw in named + ([(("base",), parts.base)] if parts.base else []):
        is_checkpoint = loc[0] == "checkpoints"
        try:
            spec = parse_spec(raw)
        except SpecError:
            count = None if is_checkpoint else count  # the schema reported it
            continue
        if spec.is_local:
            problem = _local_checkpoint_problem(raw, Path(spec.local_path or raw))
            if problem:
                report.errors.append((loc, problem))
        if is_checkpoint and count is not None:
            expands = spec.revision_is_glob or spec.subfolder_is_glob or spec.is_history
            count = None if expands else count + 1  # a glob is counted by check_resolved
    needs = "a search needs at least 2"
    callback = "fine for a Trainer callback (RecycleCallback), which adds the run's checkpoints"
    if not listed:
        problem = (("checkpoints",), f"no checkpoints are listed: {needs} (a list of specs, or a glob)")
        if for_search:
            report.errors.append(problem)
        else:
            report.warnings.append((problem[0], f"{problem[1]}; {callback}"))
    elif count == 1:
        problem = (("checkpoints",), f"one checkpoint is listed: {needs} (list more, or a glob)")
        if for_search:
            report.errors.append(problem)
        else:
            report.warnings.append((problem[0], f"{problem[1]}; {callback}"))
    if count is not None and count >= 2 and parts.search is not None:
        budget = _budget_problem(parts.search, count, trials)
        if budget:
            report.errors.append(budget)


def _local_checkpoint_problem(raw: str, path: Path) -> str | None:
    from hf_recycle.hub.files import FolderContents

    where = f"relative paths resolve against the current folder, {Path.cwd()}"
    if not path.exists():
        return f"checkpoint folder '{raw}' does not exist ({where})"
    if not path.is_dir():
        return f"'{raw}' is a file, not a checkpoint folder"
    if not FolderContents.of_folder(path).has_weights:
        return (
            f"checkpoint folder '{raw}' holds no weights (*.safetensors, adapter_model.safetensors or "
            "pytorch_model.bin): pass the folder that save_pretrained wrote"
        )
    return None


# --- model card ------------------------------------------------------------------------------------


def _check_card_template(report: PreflightReport, written: str, base_dir: Path) -> None:
    """The recipe's card template exists, is valid Jinja and names only card variables."""
    from hf_recycle.final.card import template_path, template_problems

    path = template_path(written, base_dir)
    errors, warnings = template_problems(path)
    if not path.exists() and not Path(written).expanduser().is_absolute():
        errors = [f"{e} (relative paths resolve against the recipe's folder, {base_dir})" for e in errors]
    report.errors += [(("card", "template"), e) for e in errors]
    report.warnings += [(("card", "template"), w) for w in warnings]


# --- tasks: data and metric -----------------------------------------------------------------------


@dataclass(frozen=True)
class _DataFile:
    loc: tuple[Any, ...]  # where the recipe names it
    written: str  # as the recipe writes it
    path: str  # resolved against the recipe's folder


def _check_task(report: PreflightReport, i: int, task: TaskSpec, base_dir: Path) -> None:
    kind = KINDS[task.kind]
    if not kind.uses_templates:  # it brings its own data and metric (lm_eval: the task and metric key exist)
        report.errors += [(("tasks", i, *loc), msg) for loc, msg in kind.file_problems(task, base_dir)]
        return
    _check_data(report, ("tasks", i), task, base_dir)
    _check_metric(report, ("tasks", i, "metric"), task, base_dir)


def _is_remote(path: str) -> bool:
    return "://" in path


def _split_names(expression: str) -> list[str]:
    """``"train[:64]+validation"`` -> ``["train", "validation"]`` (the schema checked the syntax)."""
    return [part.split("[", 1)[0].split("(", 1)[0].strip() for part in expression.split("+")]


def _data_files(loc: tuple[Any, ...], written: Any, resolved: Any) -> Iterator[tuple[str, _DataFile]]:
    """``(split, file)`` of every entry of ``data_files``; a path or a list is split ``train``."""
    if isinstance(written, Mapping):
        for split, value in written.items():
            for _, item in _data_files((*loc, split), value, resolved[split]):
                yield str(split), item
    elif isinstance(written, list):
        for j, (w, r) in enumerate(zip(written, resolved, strict=True)):
            yield "train", _DataFile((*loc, j), w, r)
    else:
        yield "train", _DataFile(loc, written, resolved)


def _check_data(report: PreflightReport, loc: tuple[Any, ...], task: TaskSpec, base_dir: Path) -> None:
    from hf_recycle._score.data import dataset_kwargs

    data = task.data
    kwargs = dataset_kwargs(task, base_dir)
    if data.path not in FILE_BUILDERS:
        if data.path.startswith(_LOCAL_PREFIXES) and not Path(kwargs["path"]).expanduser().exists():
            report.errors.append(
                (
                    (*loc, "data", "path"),
                    f"local dataset '{data.path}' does not exist (relative paths resolve against the "
                    f"recipe's folder, {base_dir})",
                )
            )
        return  # a Hub dataset or a local folder: datasets infers its files; nothing to read cheaply
    if data.data_dir is not None and not _is_remote(kwargs["data_dir"]):
        if not Path(kwargs["data_dir"]).is_dir():
            report.errors.append(
                (
                    (*loc, "data", "data_dir"),
                    f"data_dir '{data.data_dir}' is not a folder (relative paths resolve against the "
                    f"recipe's folder, {base_dir})",
                )
            )
    if data.data_files is None:
        if data.data_dir is None:
            report.errors.append(
                (
                    (*loc, "data"),
                    f"builder '{data.path}' reads local files and none is named: add data_files (a file, a "
                    "list, or {split: file}) or data_dir",
                )
            )
        return
    files: dict[str, list[str]] = {}
    first: dict[str, _DataFile] = {}
    for split, item in _data_files((*loc, "data", "data_files"), data.data_files, kwargs["data_files"]):
        matches = _existing(item.path)
        files.setdefault(split, []).extend(matches)
        if matches:
            first.setdefault(split, _DataFile(item.loc, item.written, matches[0]))
        elif matches is not None:
            what = "matches no file" if glob.has_magic(item.path) else "does not exist"
            report.errors.append(
                (
                    item.loc,
                    f"data file '{item.written}' {what} (relative paths resolve against the recipe's folder: "
                    f"{item.path})",
                )
            )
    used: list[str] = []
    for key in ("search_split", "validation_split", "test_split"):
        expression = getattr(task, key)
        for name in _split_names(expression) if expression else []:
            if name not in files:
                report.errors.append(
                    (
                        (*loc, key),
                        f"split '{name}' is not in the data: data_files gives {', '.join(sorted(files))} (one "
                        "file or a list is split 'train'; name splits like data_files: {train: a.jsonl, "
                        "test: b.jsonl})",
                    )
                )
            elif name not in used:
                used.append(name)
    seen: set[str] = set()
    for name in used:
        item = first.get(name)
        if item is None or item.path in seen:
            continue
        seen.add(item.path)
        _check_fields(report, loc, task, item, _columns(item.path, data.path))


def _existing(path: str) -> list[str] | None:
    """The files ``path`` names (a glob expanded, sorted); None for a remote file."""
    if _is_remote(path):
        return None
    if glob.has_magic(path):
        return sorted(p for p in glob.glob(os.path.expanduser(path), recursive=True) if os.path.isfile(p))
    return [path] if os.path.exists(os.path.expanduser(path)) else []


def _check_fields(
    report: PreflightReport, loc: tuple[Any, ...], task: TaskSpec, item: _DataFile, columns: list[str] | None
) -> None:
    if columns is None:
        return  # not cheaply readable (compressed, a folder, a huge JSON document): the scorer checks it
    if not columns:
        report.errors.append((item.loc, f"data file '{item.written}' holds no rows"))
        return
    wanted = {"prompt": template_fields(task.prompt), "target": template_fields(task.target)}
    if task.options is not None:
        wanted["options"] = (task.options,)
    for key, names in wanted.items():
        for name in (n for n in names if n not in columns):
            close = difflib.get_close_matches(name, columns, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            what = "names the field" if key == "options" else "names field"
            report.errors.append(
                (
                    (*loc, key),
                    f"{what} '{name}' but the first row of '{item.written}' has only "
                    f"{', '.join(columns)}{hint}",
                )
            )


def _columns(path: str, builder: str) -> list[str] | None:
    """The field names of the first row of a local data file ([] when it has none; None: cannot tell cheaply)."""
    path = os.path.expanduser(path)
    try:
        if os.path.isdir(path):
            return None
        if os.path.getsize(path) == 0:
            return []
        if builder == "text":
            return ["text"]
        if builder == "json" and path.endswith(_JSON_SUFFIXES):
            return _json_columns(path)
        if builder == "csv" and path.endswith(".csv"):
            with open(path, encoding="utf-8-sig", newline="") as f:
                rows = csv.reader(f)
                header, row = next(rows, None), next(rows, None)
            return list(header) if header and row is not None else []
        if builder == "parquet" and path.endswith(".parquet"):
            import pyarrow.parquet as pq

            meta = pq.ParquetFile(path)
            return list(meta.schema_arrow.names) if meta.metadata.num_rows else []
    except (OSError, UnicodeDecodeError, csv.Error, ValueError):
        return None
    except Exception:  # pyarrow's errors: the scorer reports an unreadable file when it loads it
        return None
    return None


def _json_columns(path: str) -> list[str] | None:
    """Keys of the first object of a JSON lines file, a JSON list, or a JSON mapping of columns."""
    with open(path, encoding="utf-8-sig") as f:
        head = f.read(_HEAD_BYTES).lstrip()
    if not head:
        return []
    if head[0] == "[":
        head = head[1:].lstrip()
        if head.startswith("]"):
            return []
    elif head[0] != "{":
        return None
    try:
        first, _ = json.JSONDecoder().raw_decode(head)
    except ValueError:
        return None
    return [str(k) for k in first] if isinstance(first, dict) else None


def _check_metric(report: PreflightReport, loc: tuple[Any, ...], task: TaskSpec, base_dir: Path) -> None:
    from hf_recycle._score.metric import BUNDLED_METRICS, metric_location

    name = task.metric
    if name is None or name in BUNDLED_METRICS or Path(metric_location(name, base_dir)).exists():
        return
    close = difflib.get_close_matches(name, BUNDLED_METRICS, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    if name.endswith(".py") or name.startswith(_LOCAL_PREFIXES) or name.count("/") > 1:
        report.errors.append(
            (
                loc,
                f"metric file '{name}' does not exist (relative paths resolve against the recipe's folder, "
                f"{base_dir}, then the current folder){hint}",
            )
        )
        return
    if _evaluate_cached(name):
        return
    what = (
        f"metric '{name}' is not bundled ({', '.join(BUNDLED_METRICS)}), not a local path and not in "
        "the evaluate cache"
    )
    if _hub_offline():
        report.errors.append(
            (loc, f"{what}, and the Hub is offline (HF_HUB_OFFLINE or HF_EVALUATE_OFFLINE){hint}")
        )
    else:
        report.warnings.append(
            (
                loc,
                f"{what}: evaluate will download it from the Hub when scoring starts (needs the network){hint}",
            )
        )


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode() or os.environ.get("HF_EVALUATE_OFFLINE", "").upper() in (
        "1",
        "ON",
        "YES",
        "TRUE",
    )


def _evaluate_cached(name: str) -> bool:
    """Whether ``evaluate.load(name)`` finds the module in its cache (as it does offline)."""
    from evaluate import config

    root = Path(config.HF_MODULES_CACHE) / config.MODULE_NAME_FOR_DYNAMIC_MODULES / "metrics"
    if "/" in name:
        folders = [root / name.replace("/", "--")]
    else:
        folders = [root / f"evaluate-{kind}--{name}" for kind in ("metric", "comparison", "measurement")]
    return any(
        folder.is_dir() and any(len(h.name) == 64 and h.is_dir() for h in folder.iterdir())
        for folder in folders
    )
