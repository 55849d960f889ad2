"""Which files of a checkpoint folder matter: weights, configs, tokenizers, and pickles to refuse."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# Files a merge needs besides the weights.
CONFIG_FILES = frozenset({"config.json", "generation_config.json", "adapter_config.json"})
TOKENIZER_FILES = frozenset(
    {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "tokenizer.model",
        "spiece.model",
        "sentencepiece.bpe.model",
        "chat_template.jinja",
        "chat_template.json",
    }
)
SAFE_WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json")
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.bin.index.json", "*.pt.index.json")
# Pickle files a Trainer writes next to the weights that are not weights: never needed.
NON_WEIGHT_PICKLES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth", "training_args.bin")


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def is_safe_weight(name: str) -> bool:
    """Whether a file name is safetensors weights or their index."""
    return _matches(name, SAFE_WEIGHT_PATTERNS)


def is_pickle_weight(name: str) -> bool:
    """Whether a file name is pickle weights (``pytorch_model.bin``...), not Trainer state."""
    return _matches(name, PICKLE_PATTERNS) and not _matches(name, NON_WEIGHT_PICKLES)


@dataclass(frozen=True)
class FolderContents:
    """The direct children of one checkpoint folder, sorted into what a merge needs."""

    safe_files: tuple[str, ...]
    pickle_files: tuple[str, ...]
    support_files: tuple[str, ...]

    @classmethod
    def from_names(cls, names: Iterable[str]) -> FolderContents:
        names = sorted(set(names))
        return cls(
            safe_files=tuple(n for n in names if is_safe_weight(n)),
            pickle_files=tuple(n for n in names if is_pickle_weight(n)),
            support_files=tuple(n for n in names if n in CONFIG_FILES or n in TOKENIZER_FILES),
        )

    @classmethod
    def of_folder(cls, folder: Path) -> FolderContents:
        """The contents of a local folder (empty when it is not a folder)."""
        return (
            cls.from_names(p.name for p in folder.iterdir() if p.is_file())
            if folder.is_dir()
            else cls.from_names(())
        )

    @property
    def has_weights(self) -> bool:
        return bool(self.safe_files or self.pickle_files)

    @property
    def pickle_only(self) -> bool:
        """Weights exist only as pickle files (for the detected kind)."""
        if self.kind == "lora":
            return "adapter_model.safetensors" not in self.safe_files
        return not any(n for n in self.safe_files if not n.startswith("adapter_model."))

    @property
    def kind(self) -> Literal["full", "lora"]:
        """``lora`` for a PEFT adapter folder (adapter_config.json, no full weights), else ``full``."""
        full = [n for n in self.safe_files + self.pickle_files if not n.startswith("adapter_model.")]
        adapter = "adapter_config.json" in self.support_files and any(
            n.startswith("adapter_model.") for n in self.safe_files + self.pickle_files
        )
        return "lora" if adapter and not full else "full"

    def files_to_download(self, allow_pickle: bool) -> tuple[str, ...]:
        """The names a merge needs: configs, tokenizer, safetensors (+ pickles only when allowed and needed)."""
        names = list(self.support_files)
        if self.kind == "lora":
            names += [n for n in self.safe_files if n.startswith("adapter_model.")]
            if allow_pickle and self.pickle_only:
                names += [n for n in self.pickle_files if n.startswith("adapter_model.")]
        else:
            names += [n for n in self.safe_files if not n.startswith("adapter_model.")]
            if allow_pickle and self.pickle_only:
                names += [n for n in self.pickle_files if not n.startswith("adapter_model.")]
        return tuple(sorted(set(names)))
