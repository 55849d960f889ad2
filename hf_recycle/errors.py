"""Typed exceptions of hf-recycle.

Every error derives from :class:`HfRecycleError` and also from the standard-library
type that fits it, so ``except FileNotFoundError`` keeps working for callers that do
not know hf-recycle. Messages say what failed, where (file, repo, revision, tensor,
field) and what to do about it; the command line prints them without a traceback.
"""

from __future__ import annotations

import errno
from pathlib import Path


class HfRecycleError(Exception):
    """Root of every error raised on purpose by hf-recycle."""


# --- checkpoints and merging -------------------------------------------------------------


class CheckpointNotFoundError(HfRecycleError, FileNotFoundError):
    """A checkpoint folder or file does not exist, or holds no weights.

    Example: ``checkpoint folder 'runs/ckpt-9' does not exist: pass an existing folder
    that holds config.json and model.safetensors``.
    """


class CheckpointFormatError(HfRecycleError, ValueError):
    """A checkpoint folder is malformed (bad index, unreadable config, unsupported adapter)."""


class PickleRefusedError(HfRecycleError, PermissionError):
    """A checkpoint holds only pickle weights (``pytorch_model.bin``) and pickle was not allowed."""


class IncompatibleCheckpointsError(HfRecycleError, ValueError):
    """Checkpoints cannot be merged together: different architectures or tensor names."""


class ShapeMismatchError(IncompatibleCheckpointsError):
    """A tensor has a different shape in two checkpoints.

    Example: ``tensor 'model.embed_tokens.weight' has shape (64, 16) in 'a' but shape
    (80, 16) in 'b'``.
    """


class MergeConfigError(HfRecycleError, ValueError):
    """Merge parameters are invalid (weight count, density, method name, dtype...)."""


class NonFiniteError(HfRecycleError, ArithmeticError):
    """A merge produced NaN or Inf values in a tensor."""


class OutputExistsError(HfRecycleError, FileExistsError):
    """The output folder exists and ``overwrite`` was not given."""


class DiskFullError(HfRecycleError, OSError):
    """A disk has no room for an output (or a download): refused up front, or a write hit ``ENOSPC``.

    Whatever was partly written is removed before it is raised; ``errno`` is ``ENOSPC``, and
    ``folder``, ``needed`` and ``free`` (bytes; ``needed`` is ``None`` when unknown) say where
    and how much. Example: ``not enough disk space for the merge into 'out/merged': it needs
    2.40 GB and the disk of 'out' has 1.05 GB free; nothing was written: free some space or
    choose another output folder``.
    """

    def __init__(
        self, message: str, *, folder: Path | None = None, needed: int | None = None, free: int | None = None
    ) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC
        self.folder = folder
        self.needed = needed
        self.free = free


# --- Hub ----------------------------------------------------------------------------------


class SpecError(HfRecycleError, ValueError):
    """A checkpoint spec string cannot be parsed or expands to nothing."""


class HubRepoNotFoundError(HfRecycleError, LookupError):
    """A Hub repository does not exist, or is private and no token was given."""


class HubRevisionNotFoundError(HfRecycleError, LookupError):
    """A branch, tag or commit does not exist in a Hub repository."""


class HubAuthError(HfRecycleError, PermissionError):
    """The Hub refused the request for lack of (valid) credentials."""


class HubPushError(HfRecycleError, RuntimeError):
    """An upload to the Hub failed; the local output is left intact."""


class LocalHubConfigError(HfRecycleError, ValueError):
    """The local Hub server (``hf-recycle hub serve``, ``LocalHub``) cannot start as asked.

    Example: ``refusing to serve the local Hub on '0.0.0.0': it is not a loopback address
    (127.0.0.1, ::1, localhost), so other machines could reach it; use --host 127.0.0.1, or
    pass --allow-remote to share it on purpose``.
    """


# --- recipes, scoring, search -------------------------------------------------------------


class RecipeError(HfRecycleError, ValueError):
    """A recipe file is invalid. The message lists every problem as ``file:line: field: message``."""


class TaskError(HfRecycleError, ValueError):
    """A scoring task is invalid: missing field, empty split, unknown metric..."""


class SearchError(HfRecycleError, ValueError):
    """A search cannot run as configured (too few checkpoints, bad trial count...)."""


class MissingDependencyError(HfRecycleError, ImportError):
    """An optional package needed for the requested feature is not installed.

    Example: ``sampler 'gp' needs the package 'scipy': pip install scipy``.
    """

    def __init__(self, package: str, feature: str, install: str | None = None) -> None:
        super().__init__(f"{feature} needs the package '{package}': {install or f'pip install {package}'}")
        self.package = package
        self.feature = feature


class HubUnavailableError(HfRecycleError, ConnectionError):
    """The Hub endpoint cannot be reached (network down, wrong ``--endpoint``/``HF_ENDPOINT``).

    Example: ``cannot reach the Hub at http://127.0.0.1:9 while resolving 'org/run@main': ...;
    check the endpoint, or set HF_HUB_OFFLINE=1 to use the local cache``.
    """


# --- LoRA adapters ------------------------------------------------------------------------


class UnsupportedAdapterError(CheckpointFormatError):
    """A PEFT adapter cannot be read as base + ΔW (DoRA, a non-LoRA PEFT type, conv targets...).

    Example: ``adapter 'runs/dora' uses DoRA (use_dora: true): its weight is
    magnitude · (W + ΔW) / ‖W + ΔW‖, not W + ΔW, so it cannot be combined in delta space;
    merge it into its base with peft's merge_and_unload() and pass the full checkpoint``.
    """


class AdapterBaseError(MergeConfigError):
    """A LoRA adapter has no usable base model (none given, or one that does not resolve).

    Example: ``adapter 'runs/lora-1' needs its base model: pass --base (or the recipe's
    base:); its adapter_config.json names 'meta-llama/Llama-3.2-1B', which is not a local
    folder``.
    """


# --- Trainer callback ---------------------------------------------------------------------


class RecycleCallbackError(HfRecycleError, ValueError):
    """:class:`~hf_recycle.RecycleCallback` cannot recycle this Trainer run as configured.

    Raised at train begin, before any training step, so that a long run does not end in a
    failed recycle. Example: ``RecycleCallback needs a tokenizer to score the recipe's
    tasks: pass processing_class=tokenizer to the Trainer, or tokenizer=... to
    RecycleCallback``.
    """


class SearchMemoryError(SearchError, MemoryError):
    """A search's live model does not fit in the memory it has (raised before anything is loaded)."""
