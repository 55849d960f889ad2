"""The final merge of a search's winner (or a Pareto member) into a checkpoint folder.

A ``granularity: model`` winner has one weight per checkpoint: it goes through the public
streaming merge, :func:`hf_recycle.merge.engine.merge`. A ``granularity: layers:N``
winner has one row of weights per tensor group (embeddings, each block of N layers, the
head); the engine's ``merge`` takes one row for the whole model, so this module runs the
engine's :class:`~hf_recycle.merge.engine.StreamingMerger` with a method wrapper that
hands each tensor its group's row (:class:`GroupedWeights`). Tensors are grouped by the
same function the search used (:func:`hf_recycle.search.space.group_tensors`), so every
tensor gets exactly the weights it had in the winning trial.

A small record (``.hf-recycle-final.json``) lets a re-run skip a merge that is already on
disk with the same weights and pins.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hf_recycle.errors import MergeConfigError
from hf_recycle.hub.pins import PinnedCheckpoint

logger = logging.getLogger(__name__)

__all__ = ["merge_entry", "GroupedWeights", "FINAL_RECORD"]

FINAL_RECORD = ".hf-recycle-final.json"


class GroupedWeights:
    """A merge method whose weights depend on the tensor: each tensor gets its group's row.

    Args:
        method: The underlying :class:`~hf_recycle.merge.methods.MergeMethod`.
        rows: One row of weights (one per checkpoint) per group.
        group_of: Tensor name -> group index.
    """

    def __init__(self, method: Any, rows: Sequence[Sequence[float]], group_of: Mapping[str, int]) -> None:
        self.method = method
        self.rows = [[float(w) for w in row] for row in rows]
        self.group_of = dict(group_of)
        for attr in (
            "name",
            "pretty_name",
            "reference_url",
            "needs_base",
            "default_normalize",
            "uses_density",
        ):
            setattr(self, attr, getattr(method, attr))

    def weights_for(self, key: str) -> list[float]:
        """The row of weights of tensor ``key``."""
        if key not in self.group_of:
            raise MergeConfigError(
                f"tensor '{key}' belongs to no layer group of the search: re-run the search"
            )
        return self.rows[self.group_of[key]]

    def needs_stats(self, params: Any) -> bool:
        return self.method.needs_stats(params)

    def tensor_stats(self, abs_deltas: Any, params: Any) -> Any:
        return self.method.tensor_stats(abs_deltas, params)

    def combine(self, tensors, weights, base, params, key, **kwargs):  # noqa: ANN001, ANN201 (MergeMethod.combine)
        return self.method.combine(tensors, self.weights_for(key), base, params, key, **kwargs)


def _record(entry: Mapping[str, Any], merge_info: Mapping[str, Any], pins: Sequence[PinnedCheckpoint],
            base: PinnedCheckpoint | None, dtype: str) -> dict[str, Any]:  # fmt: skip
    return {
        "trial": entry.get("trial"),
        "weights": list(entry["weights"]),
        "layer_weights": entry.get("layer_weights"),
        "density": entry.get("density"),
        "merge": dict(merge_info),
        "dtype": dtype,
        "checkpoints": [pin.to_json() for pin in pins],
        "base": base.to_json() if base is not None else None,
    }


def merge_entry(
    entry: Mapping[str, Any],
    merge_info: Mapping[str, Any],
    pins: Sequence[PinnedCheckpoint],
    output: str | Path,
    *,
    base: PinnedCheckpoint | None = None,
    dtype: str = "auto",
    device: str = "auto",
    max_shard_size: str | int = "5GB",
    layers_per_group: int | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
) -> bool:
    """Merge the checkpoints with the weights of one results.json entry into ``output``.

    Args:
        entry: ``results["winner"]`` or a member of ``results["pareto"]`` (``weights``, and
            ``layer_weights`` / ``density`` when searched).
        merge_info: ``results["merge"]``: method, lambda, normalize, density, seed.
        pins: The pinned checkpoints, in the order of the weights.
        output: The folder to write (replaced when it holds another merge).
        base: The pinned base (task-vector methods, LoRA inputs).
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
    record = _record(entry, merge_info, pins, base, dtype)
    marker = output / FINAL_RECORD
    if marker.is_file():
        try:
            if json.loads(marker.read_text(encoding="utf-8")) == json.loads(json.dumps(record)):
                logger.info("%s already holds the merge of trial %s: skipping it", output, entry.get("trial"))
                return False
        except ValueError:
            pass
    density = entry.get("density", merge_info.get("density"))
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
    if entry.get("layer_weights"):
        n = layers_per_group or _layers_per_group(list(entry["layer_weights"]))
        _merge_groups(entry["layer_weights"], list(pins), output, base=base, layers_per_group=n, **kwargs)
    else:
        from hf_recycle.merge.engine import merge

        merge(list(pins), output, weights=list(entry["weights"]), base=base, overwrite=True, **kwargs)
    marker.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return True


def _merge_groups(
    layer_weights: Mapping[str, Sequence[float]],
    pins: list[PinnedCheckpoint],
    output: Path,
    *,
    base: PinnedCheckpoint | None,
    layers_per_group: int | None,
    method: str,
    density: float | None,
    lambda_: float,
    seed: int,
    normalize: bool | None,
    dtype: str,
    device: str,
    max_shard_size: str | int,
    endpoint: str | None,
    token: str | bool | None,
) -> None:
    """Streaming merge with one row of weights per layer group (see the module docstring)."""
    from hf_recycle._version import __version__
    from hf_recycle.hub.lock import write_lock
    from hf_recycle.merge.engine import (
        MERGE_CONFIG_FILE,
        StreamingMerger,
        _write_side_files,
        resolve_device,
        staging_folder,
    )
    from hf_recycle.merge.inputs import open_inputs
    from hf_recycle.merge.methods import check_weights, get_method, resolve_params
    from hf_recycle.search.space import group_tensors
    from hf_recycle.units import parse_size, torch_dtype

    inner = get_method(method)
    params = resolve_params(inner, density=density, lambda_=lambda_, normalize=normalize, seed=seed)
    groups = list(layer_weights)
    rows = [check_weights(layer_weights[g], len(pins), inner, params.normalize) for g in groups]
    inputs = open_inputs(pins, base, endpoint=endpoint, token=token)
    try:
        merger = StreamingMerger(
            inputs.checkpoints,
            inputs.base if inner.needs_base else None,
            inner,  # replaced below, once the tensor names are known
            rows[0],
            params,
            out_dtype=None if dtype == "auto" else torch_dtype(dtype),
            device=resolve_device(device),
        )
        names, group_of = group_tensors([e.key for e in merger.entries], layers_per_group)
        if names != groups:
            raise MergeConfigError(
                f"the checkpoints' layer groups {names} differ from the search's {groups}: re-run the search"
            )
        merger.method = GroupedWeights(inner, rows, group_of)
        logger.info("merging %d checkpoints with %s, one weight row per layer group (%d groups) into %s",
                    len(pins), inner.name, len(groups), output)  # fmt: skip
        with staging_folder(output, overwrite=True) as folder:
            files = merger.run(folder, parse_size(max_shard_size))
            _write_side_files(folder, inputs.base or inputs.checkpoints[0], merger)
            record = {
                "hf_recycle_version": __version__,
                "method": inner.name,
                "pretty_name": inner.pretty_name,
                "reference_url": inner.reference_url,
                "parameters": {
                    "layer_weights": {g: row for g, row in zip(groups, rows, strict=True)},
                    "density": params.density if inner.uses_density else None,
                    "lambda": params.lambda_ if inner.needs_base else None,
                    "normalize": params.normalize,
                    "seed": params.seed,
                    "dtype": dtype,
                    "max_shard_size": parse_size(max_shard_size),
                },
                "checkpoints": [r for r in inputs.records if r.get("role") != "base"],
                "base": next((r for r in inputs.records if r.get("role") == "base"), None),
                "tie_word_embeddings": merger.tied_output,
                "files": files,
            }
            (folder / MERGE_CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")
            write_lock(inputs.pins, folder, base=inputs.base_pin)
    finally:
        inputs.close()


def _layers_per_group(groups: Sequence[str]) -> int | None:
    """N of ``layers:N`` from group names (``layers.0-3`` -> 4); ``None`` for ``["all"]``."""
    for name in groups:
        if name.startswith("layers."):
            start, end = name.removeprefix("layers.").split("-")
            return int(end) - int(start) + 1
    return None
