"""The final merge of a search's winner (or a Pareto member) into a checkpoint folder.

Both kinds of winner go through the public streaming merge,
:func:`hf_recycle._merge.engine.merge`. A ``granularity: model`` winner has one weight per
checkpoint. A ``granularity: layers:N`` winner has one row of weights per tensor group
(embeddings, each block of N layers, the head), passed as a
:class:`~hf_recycle._merge.methods.GroupWeights` whose groups come from the same function
the search used (:func:`hf_recycle._search.space.group_tensors`), so every tensor gets
exactly the weights it had in the winning trial.

A small record (``.hf-recycle-final.json``) lets a re-run skip a merge that is already on
disk with the same weights and pins.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hf_recycle._search.outcome import Candidate
from hf_recycle.errors import MergeConfigError
from hf_recycle.hub.pins import Fetched, PinnedCheckpoint

logger = logging.getLogger(__name__)

__all__ = ["merge_entry", "layer_group_weights", "FINAL_RECORD"]

FINAL_RECORD = ".hf-recycle-final.json"


def layer_group_weights(layer_weights: Mapping[str, Sequence[float]], layers_per_group: int | None) -> Any:
    """A :class:`~hf_recycle._merge.methods.GroupWeights` for a ``layers:N`` winner's ``layer_weights``.

    Tensors are grouped by :func:`hf_recycle._search.space.group_tensors` when the merge
    knows the model's tensor names.

    Raises:
        MergeConfigError: (during the merge) the model's groups differ from the search's.
    """
    from hf_recycle._merge.methods import GroupWeights
    from hf_recycle._search.space import group_tensors

    groups = list(layer_weights)

    def group_of(names: Sequence[str]) -> dict[str, str]:
        found, index = group_tensors(list(names), layers_per_group)
        if found != groups:
            raise MergeConfigError(
                f"the checkpoints' layer groups {found} differ from the search's {groups}: re-run the search"
            )
        return {name: found[i] for name, i in index.items()}

    return GroupWeights({g: [float(w) for w in layer_weights[g]] for g in groups}, group_of)


def _record(entry: Candidate, merge_info: Mapping[str, Any], pins: Sequence[PinnedCheckpoint],
            base: PinnedCheckpoint | None, dtype: str) -> dict[str, Any]:  # fmt: skip
    layers = entry.layer_weights
    return {
        "trial": entry.trial,
        "weights": list(entry.weights),
        "layer_weights": {g: list(row) for g, row in layers.items()} if layers else None,
        "density": entry.density,
        "merge": dict(merge_info),
        "dtype": dtype,
        "checkpoints": [pin.to_json() for pin in pins],
        "base": base.to_json() if base is not None else None,
    }


def merge_entry(
    entry: Candidate,
    merge_info: Mapping[str, Any],
    pins: Sequence[PinnedCheckpoint | Fetched],
    output: str | Path,
    *,
    base: PinnedCheckpoint | Fetched | None = None,
    dtype: str = "auto",
    device: str = "auto",
    max_shard_size: str | int = "5GB",
    layers_per_group: int | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
) -> bool:
    """Merge the checkpoints with the weights of one candidate of a search into ``output``.

    Args:
        entry: ``results.winner`` or a member of ``results.pareto`` (its ``weights``, and
            ``layer_weights`` / ``density`` when searched).
        merge_info: ``results.merge``: method, lambda, normalize, density, seed.
        pins: The pinned checkpoints, in the order of the weights (:class:`~hf_recycle.hub.pins.Fetched`
            ones are read from their folders; pins are downloaded, from the cache when there).
        output: The folder to write (replaced when it holds another merge).
        base: The pinned base (task-vector methods, LoRA inputs), fetched or not.
        dtype: Output dtype (``merge.dtype`` of the recipe).
        device: Where the arithmetic runs.
        max_shard_size: Cap on one output shard.
        layers_per_group: N of the search's ``granularity: layers:N`` (inferred from the
            group names of ``layer_weights`` when omitted).
        endpoint: Hub endpoint the pins live on.
        token: Hub token (never written).

    Returns:
        ``True`` when a merge ran, ``False`` when ``output`` already held this exact merge.
    """
    output = Path(output)
    record = _record(
        entry, merge_info, [_pin(p) for p in pins], _pin(base) if base is not None else None, dtype
    )
    marker = output / FINAL_RECORD
    if marker.is_file():
        try:
            if json.loads(marker.read_text(encoding="utf-8")) == json.loads(json.dumps(record)):
                logger.info("%s already holds the merge of trial %s: skipping it", output, entry.trial)
                return False
        except ValueError:
            pass
    density = entry.density if entry.density is not None else merge_info.get("density")
    kwargs = dict(
        method=merge_info["method"],
        density=density,
        lambda_=merge_info.get("lambda", 1.0),
        seed=merge_info.get("seed", 0),
        normalize=merge_info.get("normalize"),
        dtype=dtype,
        device=device,
        max_shard_size=max_shard_size,
        endpoint=endpoint,
        token=token,
    )
    from hf_recycle._merge.engine import merge

    if entry.layer_weights:
        layers = {g: list(row) for g, row in entry.layer_weights.items()}
        n = layers_per_group or _layers_per_group(list(layers))
        weights = layer_group_weights(layers, n)
    else:
        weights = list(entry.weights)
    merge(list(pins), output, weights=weights, base=base, overwrite=True, **kwargs)
    marker.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return True


def _pin(item: PinnedCheckpoint | Fetched) -> PinnedCheckpoint:
    return item.pin if isinstance(item, Fetched) else item


def _layers_per_group(groups: Sequence[str]) -> int | None:
    """N of ``layers:N`` from group names (``layers.0-3`` -> 4); ``None`` for ``["all"]``."""
    for name in groups:
        if name.startswith("layers."):
            start, end = name.removeprefix("layers.").split("-")
            return int(end) - int(start) + 1
    return None
