"""hf-recycle: optimized merging of the checkpoints a training run leaves behind.

The public API is the list in ``__all__``. Heavy libraries (torch, transformers,
peft, datasets, evaluate, optuna) load only when a name that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hf_recycle._version import __version__
from hf_recycle.errors import HfRecycleError

__all__ = [
    "__version__",
    "HfRecycleError",
    "merge",
    "GroupWeights",
    "resolve",
    "score",
    "search",
    "run",
    "Recipe",
    "RecycleCallback",
    # what the functions return
    "MergeResult",
    "PinnedCheckpoint",
    "ScoreReport",
    "SearchResults",
    "RunResult",
    "RunPlan",
]

# name -> module that defines it; imported on first access.
_LAZY = {
    "merge": "hf_recycle._merge.engine",
    "GroupWeights": "hf_recycle._merge.methods",
    "resolve": "hf_recycle.hub.resolve",
    "score": "hf_recycle._score.api",
    "search": "hf_recycle._search.api",
    "run": "hf_recycle.pipeline",
    "Recipe": "hf_recycle.recipe",
    "RecycleCallback": "hf_recycle.integrations.trainer.callback",
    "MergeResult": "hf_recycle._merge.output_folder",
    "PinnedCheckpoint": "hf_recycle.hub.pins",
    "ScoreReport": "hf_recycle._score.api",
    "SearchResults": "hf_recycle._search.outcome",
    "RunResult": "hf_recycle.pipeline",
    "RunPlan": "hf_recycle.pipeline",
}

if TYPE_CHECKING:  # pragma: no cover
    from hf_recycle._merge.engine import merge
    from hf_recycle._merge.methods import GroupWeights
    from hf_recycle._merge.output_folder import MergeResult
    from hf_recycle._score.api import ScoreReport, score
    from hf_recycle._search.api import search
    from hf_recycle._search.outcome import SearchResults
    from hf_recycle.hub.pins import PinnedCheckpoint
    from hf_recycle.hub.resolve import resolve
    from hf_recycle.integrations.trainer.callback import RecycleCallback
    from hf_recycle.pipeline import RunPlan, RunResult, run
    from hf_recycle.recipe import Recipe


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_recycle' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
