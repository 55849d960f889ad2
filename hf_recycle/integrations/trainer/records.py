"""The checkpoints a Trainer run saved, as :class:`~hf_recycle.integrations.trainer.callback.RecycleCallback` records them.

A :class:`RecordedCheckpoint` says where one save can still be read from (its folder, a
hard-linked copy, or the Hub commit its upload made); the helpers look at and copy the
model files of a ``checkpoint-N`` folder without the Trainer's optimizer and RNG state.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_recycle.hub.files import NON_WEIGHT_PICKLES, TOKENIZER_FILES, FolderContents

# Trainer state saved beside the model in checkpoint-N: not needed to merge or score.
TRAINER_STATE = (*NON_WEIGHT_PICKLES, "trainer_state.json")


@dataclass(frozen=True)
class RecordedCheckpoint:
    """One checkpoint the Trainer saved during the run.

    Attributes:
        step: Global step of the save (``N`` of ``checkpoint-N``; ``-1`` for the final weights).
        path: The folder the Trainer (or the callback, for the final weights) wrote, absolute.
        kind: ``"full"`` for complete weights, ``"lora"`` for a PEFT adapter.
        kept: The hard-linked copy under ``_recycle/pool`` (``keep_checkpoints=True``).
        hub_spec: Where the Trainer's upload put it, pinned to that upload's commit:
            ``org/run@<sha>:checkpoint-N`` (``all_checkpoints``) or ``org/run@<sha>``
            (``every_save``); set once the upload has finished.
    """

    step: int
    path: Path
    kind: str
    kept: Path | None = None
    hub_spec: str | None = None

    @property
    def name(self) -> str:
        """``checkpoint-N``, or ``final``."""
        return "final" if self.step < 0 else f"checkpoint-{self.step}"

    def spec(self) -> str | None:
        """The spec the search reads it from: its folder, else the kept copy, else the Hub; None when gone."""
        for folder in (self.path, self.kept):
            if folder is not None and has_weights(folder):
                return str(folder)
        return self.hub_spec

    def to_json(self) -> dict[str, Any]:
        """JSON form written to ``pool.json``."""
        return {
            "name": self.name,
            "step": self.step,
            "path": str(self.path),
            "kind": self.kind,
            "kept": str(self.kept) if self.kept else None,
            "hub_spec": self.hub_spec,
            "spec": self.spec(),
        }


def has_weights(folder: Path) -> bool:
    """Whether ``folder`` holds model or adapter weights (not only Trainer state)."""
    return FolderContents.of_folder(folder).has_weights


def kind_of(folder: Path) -> str:
    """``lora`` for a PEFT adapter folder, else ``full`` (as the resolver decides it)."""
    return FolderContents.of_folder(folder).kind


def has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def link_model_files(src: Path, dst: Path) -> None:
    """Hard-link (else copy) the model files of ``src`` into ``dst``: not the optimizer or RNG state."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for file in src.iterdir():
        if not file.is_file() or any(fnmatch.fnmatchcase(file.name, p) for p in TRAINER_STATE):
            continue
        try:
            os.link(file, tmp / file.name)
        except OSError:
            shutil.copy2(file, tmp / file.name)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
