"""lm-evaluation-harness tasks for the ``lm_eval`` kind: found offline, configured as ``lm_eval`` runs them.

A task is looked up in lm-eval's own index (:class:`lm_eval.tasks.TaskManager`): first under
the recipe's ``include_path`` alone (fast), then in lm-eval's registry (its several thousand
YAMLs take 10-30 s to index, once per process), which is where ``lm_eval --include_path``
finds a name that the folder does not define. :func:`check_task` checks a
task without loading its data (``hf-recycle validate``); :func:`load_task` builds the task
object (its data loaded by :mod:`datasets`, from the cache or local files) with the few-shot
count and seed that ``lm_eval`` would give it.

A task's splits are slices of its evaluation documents (its ``test_split``, else its
``validation_split``, in lm-eval's order): ``docs``, ``docs[:200]``, ``docs[200:]``,
``docs[-50:]``, ``docs[:10%]``. ``docs[:N]`` is what ``lm_eval --limit N`` scores.
"""

from __future__ import annotations

import difflib
import logging
import re
from pathlib import Path
from typing import Any

from hf_recycle.errors import MissingDependencyError, TaskError

logger = logging.getLogger(__name__)

_DOCS_RE = re.compile(r"^docs(?:\[(-?\d+%?)?:(-?\d+%?)?\])?$")
_INSTALL = "pip install 'hf-recycle[lm_eval]' (make install includes it)"
_MANAGERS: dict[tuple[str | None, bool], Any] = {}


def require_lm_eval(feature: str = "task kind 'lm_eval'") -> None:
    """Import lm-eval, or say how to install it.

    Raises:
        MissingDependencyError: lm-eval is not installed.
    """
    try:
        import lm_eval  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("lm-eval", feature, install=_INSTALL) from exc


# --- splits and metric keys (no lm-eval needed) ---------------------------------------------------


def docs_slice_problem(expression: str) -> str | None:
    """Why ``expression`` is not a slice of the evaluation documents, or None when it is."""
    match = _DOCS_RE.match(expression.replace(" ", ""))
    if match is None:
        return (
            "an lm_eval task's splits slice its evaluation documents: write docs, docs[:200], docs[200:] "
            "or docs[:10%]"
        )
    for bound in match.groups():
        if bound and bound.endswith("%") and (bound.startswith("-") or int(bound[:-1]) > 100):
            return f"percentage {bound} is not between 0% and 100%"
    return None


def doc_indices(expression: str, n_docs: int) -> range:
    """The indices of the evaluation documents that ``expression`` selects out of ``n_docs``.

    A percentage bound is rounded to the closest document, as in datasets' split syntax.
    """
    match = _DOCS_RE.match(expression.replace(" ", ""))
    if match is None:
        raise TaskError(f"'{expression}': {docs_slice_problem(expression)}")

    def bound(text: str | None) -> int | None:
        if text is None or text == "":
            return None
        if text.endswith("%"):
            return int(round(int(text[:-1]) * n_docs / 100.0))
        return int(text)

    start, stop = (bound(g) for g in match.groups())
    return range(n_docs)[slice(start, stop)]


def parse_metric_key(key: str) -> tuple[tuple[str, str], str | None]:
    """``"acc,none"`` -> ``(("acc", "none"), None)``; the second item says why a key is malformed."""
    parts = [p.strip() for p in key.split(",")]
    if len(parts) != 2 or not all(parts):
        return ("", ""), (
            f"metric '{key}' is not an lm-eval metric key: write the metric and its filter as lm-eval reports "
            'them, like "acc,none" or "exact_match,strict-match"'
        )
    return (parts[0], parts[1]), None


def registry_direction(metric_key: str | None) -> bool:
    """Whether higher is better for the metric of ``metric_key`` in lm-eval's metric registry
    (True for a metric it does not know; the task's own metadata is checked when it loads)."""
    if metric_key is None:
        return True
    name = parse_metric_key(metric_key)[0][0]
    require_lm_eval()
    import lm_eval.api.metrics  # noqa: F401 - fills the registry
    from lm_eval.api.registry import HIGHER_IS_BETTER_REGISTRY, is_higher_better

    return bool(is_higher_better(name)) if name in HIGHER_IS_BETTER_REGISTRY else True


# --- finding a task -------------------------------------------------------------------------------


def include_folder(spec: Any, base_dir: str | Path | None) -> Path | None:
    """The task's ``include_path``, resolved against ``base_dir`` (the recipe's folder)."""
    written = spec.lm_eval.include_path
    if written is None:
        return None
    path = Path(written).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return path.resolve()


def _manager(include: Path | None, defaults: bool) -> Any:
    key = (str(include) if include else None, defaults)
    if key not in _MANAGERS:
        from lm_eval.tasks import TaskManager

        if defaults:
            logger.info("indexing lm-eval's tasks (once per process; it takes a while)")
        _MANAGERS[key] = TaskManager(
            include_path=str(include) if include else None, include_defaults=defaults
        )
    return _MANAGERS[key]


def find_task(spec: Any, base_dir: str | Path | None) -> tuple[Any, Any]:
    """``(TaskManager, index entry)`` of the task ``spec.lm_eval.task``.

    Raises:
        MissingDependencyError: lm-eval is not installed.
        TaskError: ``include_path`` is not a folder, no task has that name, or the name is
            a group or a tag of several tasks.
    """
    require_lm_eval()
    from lm_eval.tasks._index import Kind

    name = spec.lm_eval.task
    include = include_folder(spec, base_dir)
    if include is not None and not include.is_dir():
        raise TaskError(
            f"task '{spec.name}': lm_eval.include_path '{spec.lm_eval.include_path}' is not a folder (relative "
            f"paths resolve against the recipe's folder: {include})"
        )
    # Under include_path alone first, then lm-eval's registry alone: a name that include_path lacks
    # is the registry's in `lm_eval --include_path` too, and the registry is indexed once per process.
    managers = ([_manager(include, False)] if include is not None else []) + [None]
    for i, manager in enumerate(managers):
        manager = managers[i] = manager or _manager(None, True)
        if name in manager.task_index:
            break
    entry = manager.task_index.get(name)
    if entry is None:
        names = [n for m in managers for n in m.all_subtasks]
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        where = f" nor under include_path '{include}'" if include else ""
        raise TaskError(
            f"task '{spec.name}': lm-eval has no task '{name}' in its registry{where}{hint} "
            "(lm_eval ls tasks lists them; your own task YAMLs go in a folder named by lm_eval.include_path)"
        )
    if entry.kind in (Kind.GROUP, Kind.TAG):
        members = sorted(entry.tags) if entry.kind == Kind.TAG else _group_members(entry)
        shown = ", ".join(members[:5]) + (", ..." if len(members) > 5 else "")
        raise TaskError(
            f"task '{spec.name}': lm-eval's '{name}' is a {entry.kind.name.lower()} of tasks ({shown}); a "
            "recipe task scores one lm-eval task: give each one its own recipe task"
        )
    return manager, entry


def _group_members(entry: Any) -> list[str]:
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        members = load_yaml(entry.yaml_path, resolve_func=False).get("task") or []
    except Exception:  # a group whose YAML lm-eval itself cannot read: its name is enough
        return []
    return [m if isinstance(m, str) else str(m.get("task") or m.get("group")) for m in members]


def task_metrics(entry: Any) -> dict[str, bool | None] | None:
    """Metric key (``metric,filter``) -> higher is better, for every key the task reports, from
    its config alone (no data loaded); None for a Python-defined task (known once it loads).

    Raises:
        TaskError: The task's YAML cannot be read.
    """
    from lm_eval.tasks._index import Kind

    if entry.kind == Kind.PY_TASK or entry.yaml_path is None:
        return None
    from lm_eval.api.registry import DEFAULT_METRIC_REGISTRY, HIGHER_IS_BETTER_REGISTRY, is_higher_better
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        config = load_yaml(entry.yaml_path, resolve_func=True)
    except Exception as exc:  # noqa: BLE001 - YAML errors, a !function that does not import...
        raise TaskError(
            f"lm-eval cannot read the config of task '{entry.name}' ({entry.yaml_path}): {type(exc).__name__}: {exc}"
        ) from exc
    directions: dict[str, bool | None] = {}
    if config.get("metric_list"):
        for item in config["metric_list"]:
            metric = item.get("metric")
            name = metric if isinstance(metric, str) else getattr(metric, "__name__", str(metric))
            directions[name] = item.get("higher_is_better")
    else:
        for name in DEFAULT_METRIC_REGISTRY.get(config.get("output_type", "generate_until"), []):
            directions[name] = None
    for name, known in directions.items():
        if known is None and name in HIGHER_IS_BETTER_REGISTRY:
            directions[name] = is_higher_better(name)
    filters = [f.get("name", "none") for f in config.get("filter_list") or []] or ["none"]
    return {f"{metric},{flt}": hib for metric, hib in directions.items() for flt in filters}


def metric_problem(spec: Any, reported: dict[str, bool | None]) -> str | None:
    """Why ``spec.metric`` is not one of the ``reported`` keys, or its direction disagrees."""
    key = spec.metric.replace(" ", "")
    if key not in reported:
        close = difflib.get_close_matches(key, list(reported), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return (
            f"lm-eval task '{spec.lm_eval.task}' reports no metric '{spec.metric}': it reports "
            f"{', '.join(reported)}{hint}"
        )
    direction = reported[key]
    if direction is not None and spec.higher_is_better is None and direction != spec.larger_is_better:
        said = "higher" if direction else "lower"
        return (
            f"lm-eval task '{spec.lm_eval.task}' says {said} is better for '{key}', its metric registry says "
            f"otherwise: set higher_is_better: {str(direction).lower()} on the task"
        )
    return None


def check_task(spec: Any, base_dir: str | Path | None) -> list[tuple[tuple[Any, ...], str]]:
    """What is wrong with an ``lm_eval`` task on this machine, as ``(location under the task, message)``:
    lm-eval missing, no such task (offline: lm-eval's registry or ``include_path``), or a metric
    key the task does not report. Nothing is downloaded."""
    try:
        _, entry = find_task(spec, base_dir)
        reported = task_metrics(entry)
    except MissingDependencyError as exc:
        return [(("kind",), str(exc))]
    except TaskError as exc:
        text = str(exc).removeprefix(f"task '{spec.name}': ")
        where = (
            ("lm_eval", "include_path")
            if "include_path '" in text and "not a folder" in text
            else ("lm_eval", "task")
        )
        return [(where, text)]
    if reported is None or spec.metric is None:
        return []
    why = metric_problem(spec, reported)
    return [(("metric",), why)] if why else []


# --- loading a task -------------------------------------------------------------------------------


def load_task(spec: Any, base_dir: str | Path | None) -> Any:
    """The lm-eval task object of ``spec``, its data loaded, configured as ``lm_eval`` configures it:
    ``num_fewshot`` as ``--num_fewshot`` sets it, and lm-eval's default few-shot seed.

    Raises:
        MissingDependencyError: lm-eval is not installed.
        TaskError: No such task, or its data cannot be loaded, or it needs what scoring here
            cannot give (images, running generated code).
    """
    manager, entry = find_task(spec, base_dir)
    from lm_eval.defaults import DEFAULT_OTHER_SEED

    try:
        task = manager.load([entry.name])["tasks"][entry.name]
    except Exception as exc:  # datasets' errors (offline, missing file), lm-eval's config errors
        raise TaskError(
            f"task '{spec.name}': lm-eval cannot load task '{entry.name}': {type(exc).__name__}: {exc} (its data "
            "comes from the Hub cache or local files; relative paths inside a task's YAML resolve against the "
            "current folder, as with lm_eval)"
        ) from exc
    if getattr(task, "MULTIMODAL", False):
        raise TaskError(
            f"task '{spec.name}': lm-eval task '{entry.name}' needs images or audio: use a text task"
        )
    if getattr(task, "UNSAFE_CODE", False):
        raise TaskError(
            f"task '{spec.name}': lm-eval task '{entry.name}' runs generated code, which hf-recycle does not do"
        )
    default = task.get_config("num_fewshot")
    if spec.lm_eval.num_fewshot is not None and default != 0:  # as simple_evaluate: a YAML's 0 stays 0
        task.set_config(key="num_fewshot", value=spec.lm_eval.num_fewshot)
    elif default is None:
        task.set_config(key="num_fewshot", value=0)
    task.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)
    return task
