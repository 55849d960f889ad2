"""Load a task's split with :mod:`datasets` and render its prompt and target templates.

This runs once per task, when its scorer is built; nothing here runs per candidate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_recycle._score.tasks import SplitName, TaskSpec, template_fields
from hf_recycle.errors import TaskError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    """One rendered example.

    Attributes:
        prompt: The rendered prompt (before any chat template).
        target: The rendered target: the expected continuation, or for ``choice`` the
            text of the gold option.
        options: For ``choice``: the option strings, in the example's order.
        label: For ``choice``: the index of the gold option.
    """

    prompt: str
    target: str
    options: tuple[str, ...] = ()
    label: int | None = None


def _is_remote(path: str) -> bool:
    return "://" in path


def _resolve(path: str, base_dir: Path | None) -> str:
    if base_dir is None or _is_remote(path) or Path(path).is_absolute():
        return path
    return str(base_dir / path)


def dataset_kwargs(spec: TaskSpec, base_dir: str | Path | None) -> dict[str, Any]:
    """The keyword arguments of :func:`datasets.load_dataset` for ``spec``, local paths resolved.

    Relative ``data_files`` and ``data_dir`` resolve against ``base_dir`` (the recipe's
    folder); so does ``path`` when it names an existing local folder or file there.
    """
    base = Path(base_dir) if base_dir is not None else None
    data = spec.data
    kwargs: dict[str, Any] = {"path": data.path}
    if base is not None and not _is_remote(data.path) and (base / data.path).exists():
        kwargs["path"] = str(base / data.path)
    if data.name is not None:
        kwargs["name"] = data.name
    if data.revision is not None:
        kwargs["revision"] = data.revision
    if data.data_dir is not None:
        kwargs["data_dir"] = _resolve(data.data_dir, base)
    files = data.data_files
    if isinstance(files, str):
        kwargs["data_files"] = _resolve(files, base)
    elif isinstance(files, list):
        kwargs["data_files"] = [_resolve(f, base) for f in files]
    elif isinstance(files, dict):
        kwargs["data_files"] = {
            k: _resolve(v, base) if isinstance(v, str) else [_resolve(f, base) for f in v]
            for k, v in files.items()
        }
    return kwargs


def load_split(spec: TaskSpec, split: SplitName, base_dir: str | Path | None = None):
    """Load the rows of ``spec``'s ``split`` as a :class:`datasets.Dataset`.

    Raises:
        TaskError: The data cannot be loaded (missing file, unknown dataset, offline),
            the split expression is invalid, or it selects no examples.
    """
    expression = spec.split_expression(split)
    kwargs = dataset_kwargs(spec, base_dir)
    import datasets

    logger.debug("task '%s': load_dataset(%s, split=%r)", spec.name, kwargs, expression)
    try:
        dataset = datasets.load_dataset(**kwargs, split=expression)
    except FileNotFoundError as exc:
        raise TaskError(
            f"task '{spec.name}': data not found ({exc}); relative data_files resolve against the "
            f"recipe's folder ({base_dir}): check the path"
        ) from exc
    except ValueError as exc:
        text = str(exc)
        if "corresponds to no data" in text:
            raise TaskError(
                f"task '{spec.name}': {split}_split '{expression}' selects no examples: "
                "check the slice bounds against the size of the data"
            ) from exc
        raise TaskError(
            f"task '{spec.name}': invalid {split}_split '{expression}': {text} "
            "(write it like 'train', 'train[:64]' or 'validation[10%:]')"
        ) from exc
    except Exception as exc:  # datasets raises many types (ConnectionError, DatasetNotFoundError...)
        raise TaskError(
            f"task '{spec.name}': cannot load data {kwargs}: {type(exc).__name__}: {exc}"
        ) from exc
    if len(dataset) == 0:
        raise TaskError(
            f"task '{spec.name}': {split}_split '{expression}' holds no examples: the data is empty"
        )
    return dataset


def _check_fields(spec: TaskSpec, columns: list[str]) -> None:
    wanted = [("prompt", f) for f in template_fields(spec.prompt)] + [
        ("target", f) for f in template_fields(spec.target)
    ]
    if spec.options is not None:
        wanted.append(("options", spec.options))
    missing = [(where, field) for where, field in wanted if field not in columns]
    if missing:
        named = ", ".join(f"'{field}' (in {where})" for where, field in missing)
        raise TaskError(
            f"task '{spec.name}': the data has no field {named}; its fields are {', '.join(columns)}: "
            "fix the template or the data"
        )


def single_field(template: str) -> str | None:
    """The field a template is exactly (``"{label}"`` -> ``label``), else None."""
    fields = template_fields(template)
    return fields[0] if len(fields) == 1 and template == "{" + fields[0] + "}" else None


def render_examples(spec: TaskSpec, dataset) -> list[Example]:
    """Render every row of ``dataset`` into an :class:`Example`, in dataset order.

    Raises:
        TaskError: A template names a field the data lacks, a row fails to render, or a
            ``choice`` row has no options or a target that matches none of them.
    """
    _check_fields(spec, list(dataset.column_names))
    from hf_recycle._score.kinds import KINDS

    kind = KINDS[spec.kind]
    examples: list[Example] = []
    for i, row in enumerate(dataset):
        try:
            prompt = spec.prompt.format(**row)
            target = spec.target.format(**row)
        except (KeyError, IndexError, AttributeError, ValueError, TypeError) as exc:
            raise TaskError(
                f"task '{spec.name}': example {i} does not render: {type(exc).__name__}: {exc}"
            ) from exc
        examples.append(kind.render(spec, row, i, prompt, target))
    return examples


def load_examples(
    spec: TaskSpec, split: SplitName = "search", base_dir: str | Path | None = None
) -> list[Example]:
    """Load ``spec``'s ``split`` and render its examples (see :func:`load_split`, :func:`render_examples`)."""
    return render_examples(spec, load_split(spec, split, base_dir))
