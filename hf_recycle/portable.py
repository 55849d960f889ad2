"""The names a pushed model folder gives to the local things a run used: no absolute path of this machine.

A run reads local folders (``./ckpt``, a Trainer's ``checkpoint-N``), data files and a study
database by their absolute paths. What it pushes (the card, ``recipe.yaml``,
``results.json``, ``results.md``, ``checkpoints.lock.json``, ``merge_config.json``, the
plots) names them through :class:`PortableNames` instead:

- a local checkpoint folder whose files are also on the Hub (the Trainer pushed them) by its
  Hub pin, ``org/run@<sha>`` or ``org/run@<sha>:checkpoint-N``;
- any other local path relative to the run's folder (``./checkpoint-8``,
  ``./_recycle/final``), or by its last part when it lies outside it;
- a Hub checkpoint, a relative path or a URL as it is.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hf_recycle.hub.pins import PinnedCheckpoint

__all__ = ["PortableNames"]

_URL_WITH_PATH = re.compile(r"^([A-Za-z][\w+.-]*:///)(/.*)$")  # sqlite:////abs/study.db


@dataclass(frozen=True)
class PortableNames:
    """How a pushed folder names local paths and local checkpoints.

    Attributes:
        roots: The run's folders, most specific first: a path inside one is named relative
            to it.
        hub_specs: Absolute local checkpoint folder -> the Hub spec pinned to the commit that
            holds the same files (``org/run@<40-hex sha>[:subfolder]``).
    """

    roots: tuple[Path, ...]
    hub_specs: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "roots", tuple(Path(r).resolve() for r in self.roots))
        object.__setattr__(self, "hub_specs", {_key(k): v for k, v in self.hub_specs.items()})

    # --- strings --------------------------------------------------------------------------

    def path(self, value: str) -> str:
        """``value`` relative to the first root that holds it (else its last part); relative as it is."""
        if not os.path.isabs(value):
            return value
        path = Path(value).resolve()
        for root in self.roots:
            if path.is_relative_to(root):
                return path.relative_to(root).as_posix() or "."
        return path.name or "."

    def spec(self, value: str) -> str:
        """A checkpoint spec: its Hub pin, ``./<relative path>`` for an absolute folder, else as it is."""
        if not os.path.isabs(value):
            return value
        hub = self.hub_specs.get(_key(value))
        if hub is not None:
            return hub
        name = self.path(value)
        return name if name.startswith(".") else f"./{name}"

    def storage(self, url: str | None) -> str | None:
        """An Optuna storage URL or file with its absolute path made portable (``sqlite:///_recycled/study.db``)."""
        if url is None:
            return None
        match = _URL_WITH_PATH.match(url)
        if match:
            return match.group(1) + self.path(match.group(2))
        return self.path(url)

    def value(self, value: Any) -> Any:
        """Every absolute path string in a JSON-like value (str, list, dict) made portable."""
        if isinstance(value, str):
            return self.storage(value) if _URL_WITH_PATH.match(value) else self.path(value)
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        if isinstance(value, Mapping):
            return {k: self.value(v) for k, v in value.items()}
        return value

    # --- checkpoints ------------------------------------------------------------------------

    def pin(self, pin: PinnedCheckpoint) -> PinnedCheckpoint:
        """A local pin as its Hub pin when it has one, else with its folder named portably."""
        if not pin.is_local:
            return pin
        folder = pin.local_path or pin.spec
        hub = self.hub_specs.get(_key(folder)) if os.path.isabs(folder) else None
        if hub is not None:
            from hf_recycle.hub.spec import is_commit_sha, parse_spec

            parsed = parse_spec(hub)
            commit = parsed.revision if is_commit_sha(parsed.revision) else None
            return PinnedCheckpoint(parsed.repo_id, parsed.revision, commit, parsed.subfolder, pin.kind, hub)
        name = pin.spec if not os.path.isabs(pin.spec) else self.spec(folder)
        return replace(pin, spec=name, local_path=name)

    def pin_json(self, data: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """A pin's JSON form (``results.json``, lock files) with :meth:`pin` applied."""
        if data is None:
            return None
        pin = self.pin(PinnedCheckpoint.from_json(dict(data), spec=data.get("spec")))
        rest = {k: v for k, v in data.items() if k not in ("path", "local_path")}
        return {**rest, "spec": pin.spec, **pin.to_json()}

    # --- files ------------------------------------------------------------------------------

    def results(self, results: Mapping[str, Any]) -> dict[str, Any]:
        """``results.json`` content with every pin and path portable."""
        out = copy.deepcopy(dict(results))
        out["checkpoints"] = [self.pin_json(c) for c in out.get("checkpoints", [])]
        if out.get("base") is not None:
            out["base"] = self.pin_json(out["base"])
        return self.value(out)

    def merge_config(
        self, data: Mapping[str, Any], pins: Sequence[PinnedCheckpoint], base: PinnedCheckpoint | None
    ) -> dict[str, Any]:
        """``merge_config.json`` content: each input record named by its portable pin, no cache path."""
        out = copy.deepcopy(dict(data))
        records = list(out.get("checkpoints") or [])
        pairs = list(zip(records, pins, strict=False))
        if out.get("base") is not None and base is not None:
            pairs.append((out["base"], base))
        for record, pin in pairs:
            portable = self.pin(pin)
            record.pop("path", None)  # a local folder or the Hub cache of this machine
            record["spec"] = portable.spec
            if portable.is_local:
                record["path"] = portable.local_path
            else:
                record.update(
                    repo_id=portable.repo_id,
                    revision=portable.revision,
                    commit=portable.commit,
                    subfolder=portable.subfolder,
                )
        return self.value(out)

    def recipe(self, recipe: Any) -> Any:
        """A :class:`~hf_recycle.recipe.Recipe` whose checkpoints, base, output, storage, task and card paths are portable."""
        tasks = [
            task.model_copy(
                update={
                    "data": task.data
                    and task.data.model_copy(
                        update={
                            "path": self.path(task.data.path),
                            "data_files": self.value(task.data.data_files),
                            "data_dir": self.value(task.data.data_dir),
                        }
                    ),
                    "lm_eval": task.lm_eval
                    and task.lm_eval.model_copy(
                        update={"include_path": self.value(task.lm_eval.include_path)}
                    ),
                    "metric": self.value(task.metric),
                }
            )
            for task in recipe.tasks
        ]
        return recipe.model_copy(
            update={
                "checkpoints": [self.spec(s) for s in recipe.checkpoints],
                "base": self.spec(recipe.base) if recipe.base else recipe.base,
                "output": recipe.output.model_copy(update={"dir": self.value(recipe.output.dir)}),
                "search": recipe.search.model_copy(update={"storage": self.storage(recipe.search.storage)}),
                "tasks": tasks,
                "card": (
                    recipe.card.model_copy(update={"template": self.path(recipe.card.template)})
                    if getattr(recipe, "card", None) is not None
                    else None
                ),
            }
        )

    def recipe_text(self, text: str, recipe: Any) -> str:
        """A recipe file's exact text with each absolute path it holds replaced by its portable name."""
        found: dict[str, str] = {}
        for value in [*recipe.checkpoints, recipe.base]:
            if value and os.path.isabs(value):
                found[value] = self.spec(value)
        paths = [recipe.output.dir, recipe.search.storage]
        if getattr(recipe, "card", None) is not None:
            paths.append(recipe.card.template)
        for task in recipe.tasks:
            if task.data is not None:
                paths += [task.data.path, task.data.data_files, task.data.data_dir]
            paths += [task.metric, task.lm_eval and task.lm_eval.include_path]
        for value in _strings(paths):
            portable = self.value(value)
            if portable != value:
                found[value] = portable
        for value in sorted(found, key=len, reverse=True):  # longer paths first: one may hold another
            text = text.replace(value, found[value])
        return text


def _key(path: str | Path) -> str:
    return str(Path(path).resolve())


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []
