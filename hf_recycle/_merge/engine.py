"""The streaming merge: checkpoints in, one merged checkpoint folder out.

:func:`merge` is the public entry point (``hf_recycle.merge``). It opens the inputs
(:mod:`hf_recycle._merge.inputs`), checks that they can be merged
(:mod:`hf_recycle._merge.compat`), and lets
:class:`~hf_recycle._merge.streaming.StreamingMerger` combine them a block of rows at a
time on every core, with reused float32 buffers, writing each block straight into its
place in the output shards (:mod:`hf_recycle._merge.writer`). Memory holds a few blocks
per checkpoint and worker, not whole tensors (TIES with density < 1 also holds one
float32 copy of the tensor being trimmed). The folder is assembled in a temporary
sibling and renamed into place only when everything succeeded
(:func:`hf_recycle.outputs.staging_folder`), after a check that the disk has room for it.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from hf_recycle._merge.compat import align_tied_heads, check_compatible
from hf_recycle._merge.inputs import CheckpointLike, MergeInputs, expand_checkpoints, open_inputs
from hf_recycle._merge.lora import LoraSource
from hf_recycle._merge.methods import (
    GroupWeights,
    MergeMethod,
    MethodParams,
    check_weights,
    get_method,
    resolve_params,
)
from hf_recycle._merge.output_folder import MergeResult, write_merge_record
from hf_recycle._merge.sources import TensorSource
from hf_recycle._merge.streaming import StreamingMerger
from hf_recycle.errors import MergeConfigError, OutputExistsError
from hf_recycle.hub.files import TOKENIZER_FILES
from hf_recycle.outputs import staging_folder
from hf_recycle.units import dtype_name, parse_size, torch_dtype

__all__ = [
    "MergeResult",
    "merge",
    "resolve_device",
    "staging_folder",
    "StreamingMerger",
    "GroupWeights",
    "align_tied_heads",
    "check_compatible",
]

logger = logging.getLogger(__name__)

#: Files copied from the base (or first) checkpoint next to the merged weights.
COPIED_FILES = ("generation_config.json", *sorted(TOKENIZER_FILES))


def merge(
    checkpoints: Sequence[CheckpointLike],
    output: str | Path,
    *,
    method: str = "linear",
    weights: Sequence[float] | GroupWeights | None = None,
    base: CheckpointLike | None = None,
    density: float | None = None,
    lambda_: float = 1.0,
    seed: int = 0,
    normalize: bool | None = None,
    dtype: str = "auto",
    device: str = "auto",
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    allow_pickle: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
    output_format: str = "full",
    lora_rank: str | int = "exact",
) -> MergeResult:
    """Merge checkpoints into a new checkpoint folder, streaming tensors from disk.

    Args:
        checkpoints: Checkpoint folders (or opened :class:`TensorSource` objects).
        output: Folder to create. Refused if it exists, unless ``overwrite``.
        method: ``linear``, ``task_arithmetic``, ``ties``, ``dare_linear`` or ``dare_ties``.
        weights: One weight per checkpoint (default: uniform, 1/n each), or a
            :class:`~hf_recycle._merge.methods.GroupWeights`: one such row per group of tensors
            (a ``granularity: layers:N`` search winner).
        base: The base checkpoint (required by the task-vector methods).
        density: Fraction of task-vector entries kept (ties, dare_*), in (0, 1]; default 1.
        lambda_: Scale of the merged task vector (task-vector methods).
        seed: Seed of the DARE masks.
        normalize: Divide by the sum of weights (default: the method's default).
        dtype: Output dtype: ``auto`` (that of the inputs), ``float32``, ``bfloat16``, ``float16``.
        device: Where to do the arithmetic: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        max_shard_size: Cap on the bytes of one output shard (``"5GB"``, ``"500MB"``, bytes).
        overwrite: Replace an existing ``output`` (only once the merge succeeded).
        allow_pickle: Accept ``pytorch_model.bin`` inputs, loaded with ``torch.load(weights_only=True)``.
        endpoint: Hub endpoint for Hub specs (reserved for Hub resolution).
        token: Hub token for Hub specs (reserved for Hub resolution).
        output_format: ``full`` (a checkpoint) or ``lora`` (every input a LoRA adapter over one
            base: one PEFT adapter holding Σ cᵢ·ΔWᵢ, see :mod:`hf_recycle._merge.lora_output`).
        lora_rank: For ``lora``: ``exact`` (concatenated factors) or a rank R (SVD truncation).

    Returns:
        A :class:`MergeResult`.

    Raises:
        MergeConfigError: Bad parameters (method, weights, density, dtype, device, output).
        CheckpointNotFoundError: A checkpoint folder is missing or has no weights.
        PickleRefusedError: A checkpoint has only pickle weights and ``allow_pickle`` is off.
        IncompatibleCheckpointsError: Different architectures or tensor names.
        ShapeMismatchError: A tensor has different shapes in two checkpoints.
        NonFiniteError: The merge produced NaN or Inf (nothing is written).
        OutputExistsError: ``output`` exists and ``overwrite`` is off.
        DiskFullError: The disk of ``output`` cannot hold the merge (checked before merging) or
            filled up meanwhile (nothing is left behind).
    """
    started = time.perf_counter()
    merge_method = get_method(method)
    params = resolve_params(merge_method, density=density, lambda_=lambda_, normalize=normalize, seed=seed)
    if not checkpoints:
        raise MergeConfigError("no checkpoints to merge: pass at least one checkpoint folder")
    # Hub specs: globs and @history become one pinned checkpoint each, so weights line up.
    checkpoints = expand_checkpoints(checkpoints, endpoint=endpoint, token=token)
    count = len(checkpoints)
    weight_spec: list[float] | GroupWeights
    if isinstance(weights, GroupWeights):
        if output_format == "lora":
            raise MergeConfigError(
                "--output-format lora takes one weight per checkpoint, not weights per group"
            )
        rows = {}
        for group, row in weights.rows.items():
            try:
                rows[group] = check_weights(row, count, merge_method, params.normalize)
            except MergeConfigError as exc:
                raise MergeConfigError(f"weight group '{group}': {exc}") from None
        weight_spec = GroupWeights(rows, weights.group_of)
    else:
        weight_spec = check_weights(
            [1.0 / count] * count if weights is None else weights, count, merge_method, params.normalize
        )
    if merge_method.needs_base and base is None:
        raise MergeConfigError(
            f"merge method '{method}' works on task vectors and needs a base checkpoint: pass --base"
        )
    out_dtype = None if dtype in (None, "auto") else torch_dtype(dtype)
    shard_cap = parse_size(max_shard_size)
    run_device = resolve_device(device)
    output = Path(output).expanduser()
    if output.exists() and not overwrite:
        raise OutputExistsError(
            f"output folder '{output}' already exists: pass --overwrite to replace it, or choose another folder"
        )

    if output_format not in ("full", "lora"):
        raise MergeConfigError(f"output format '{output_format}' is not supported: use full or lora")
    inputs = open_inputs(checkpoints, base, allow_pickle=allow_pickle, endpoint=endpoint, token=token)
    try:
        _check_output_location(output, inputs)
        if output_format == "lora":  # LoRA adapters in, one LoRA adapter out
            from hf_recycle._merge.lora_output import merge_to_lora_folder, parse_lora_rank

            assert isinstance(weight_spec, list)
            return merge_to_lora_folder(
                inputs, output, method=merge_method, weights=weight_spec, params=params,
                lora_rank=parse_lora_rank(lora_rank), out_dtype=out_dtype, device=run_device,
                overwrite=overwrite, started=started,
            )  # fmt: skip
        if base is not None and not merge_method.needs_base:
            logger.info(
                "method '%s' does not use the base's weights; config and tokenizer come from it", method
            )
        merger = StreamingMerger(
            inputs.checkpoints,
            inputs.base if merge_method.needs_base else None,
            merge_method,
            weight_spec,
            params,
            out_dtype=out_dtype,
            device=run_device,
            extra_sources=[inputs.base] if inputs.base is not None and not merge_method.needs_base else [],
        )
        logger.info(
            "merging %d checkpoints with %s (%s) on %s (%d worker threads) into %s",
            count,
            merge_method.name,
            _describe(merge_method, params, weight_spec),
            run_device,
            merger.workers,
            output,
        )
        reference = _side_file_reference(inputs)
        needed = merger.output_bytes + _side_file_bytes(reference)
        with staging_folder(output, overwrite, needed=needed) as folder:
            files = merger.run(folder, shard_cap)
            _write_side_files(folder, reference, merger)
            parameters = {
                "weights": weight_spec if isinstance(weight_spec, list) else None,
                "group_weights": weight_spec.to_json() if isinstance(weight_spec, GroupWeights) else None,
                "density": params.density if merge_method.uses_density else None,
                "lambda": params.lambda_ if merge_method.needs_base else None,
                "normalize": params.normalize,
                "seed": params.seed,
                "dtype": dtype if out_dtype is None else dtype_name(out_dtype),
                "max_shard_size": shard_cap,
            }
            write_merge_record(
                folder, merge_method, inputs, parameters, tie_word_embeddings=merger.tied_output, files=files
            )
    finally:
        inputs.close()
    seconds = time.perf_counter() - started
    logger.info(
        "wrote %.2f GB in %d file(s) to %s in %.1f s (%.2f GB/s of input)",
        merger.output_bytes / 1e9,
        len(files),
        output,
        seconds,
        merger.input_bytes / 1e9 / max(seconds, 1e-9),
    )
    return MergeResult(
        output=output,
        files=tuple(files),
        method=merge_method.name,
        num_tensors=len(merger.entries),
        input_bytes=merger.input_bytes,
        output_bytes=merger.output_bytes,
        seconds=seconds,
        device=run_device.type,
    )


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU (with a log line); ``cuda`` must be available."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        logger.info("no CUDA device found: merging on the CPU")
        return torch.device("cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise MergeConfigError(
                f"--device {device} was asked for but no CUDA device is available: use --device cpu or auto"
            )
        try:
            chosen = torch.device(device)
        except RuntimeError:
            raise MergeConfigError(f"device '{device}' is not a device: use cuda or cuda:N") from None
        count = torch.cuda.device_count()
        if chosen.index is not None and chosen.index >= count:
            raise MergeConfigError(
                f"device '{device}' does not exist: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
        return chosen
    raise MergeConfigError(f"device '{device}' is not supported: use auto, cpu, cuda or cuda:N")


def _describe(method: MergeMethod, params: MethodParams, weights: Sequence[float] | GroupWeights) -> str:
    described = (
        f"one row of weights per group ({len(weights.rows)} groups)"
        if isinstance(weights, GroupWeights)
        else "weights " + ", ".join(f"{w:g}" for w in weights)
    )
    parts = [described, f"normalize {params.normalize}"]
    if method.uses_density:
        parts.append(f"density {params.density:g}")
    if method.needs_base:
        parts.append(f"lambda {params.lambda_:g}")
    if method.name.startswith("dare"):
        parts.append(f"seed {params.seed}")
    return ", ".join(parts)


def _side_file_reference(inputs: MergeInputs) -> TensorSource:
    """Where config.json, generation_config.json and tokenizer files come from.

    The base, else the first checkpoint; a LoRA adapter folder has no config or tokenizer,
    so for an adapter it is the base the adapter was opened over.
    """
    if inputs.base is not None:
        return inputs.base
    first = inputs.checkpoints[0]
    return first.base if isinstance(first, LoraSource) else first


def _check_output_location(output: Path, inputs: MergeInputs) -> None:
    target = output.resolve()
    sources = [*inputs.checkpoints, *([inputs.base] if inputs.base else [])]
    sources += [s.base for s in inputs.checkpoints if isinstance(s, LoraSource)]
    for source in sources:
        path = Path(source.path).resolve()
        if path == target or target in path.parents:
            raise MergeConfigError(
                f"output folder '{output}' holds the input checkpoint '{source.name}': choose another output folder"
            )
        if path in target.parents:
            raise MergeConfigError(
                f"output folder '{output}' is inside the input checkpoint '{source.name}' ({path}): "
                "choose an output folder outside every input"
            )


def _side_file_bytes(reference: TensorSource) -> int:
    """Bytes of the config and the copied side files (a little under what they take written)."""
    names = ("config.json", *COPIED_FILES)
    return sum(p.stat().st_size for p in (Path(reference.path) / n for n in names) if p.is_file())


def _write_side_files(folder: Path, reference: TensorSource, merger: StreamingMerger) -> None:
    config = dict(reference.config)
    config["dtype"] = merger.output_dtype_name
    if "torch_dtype" in config:
        config["torch_dtype"] = merger.output_dtype_name
    if not merger.tied_output:
        config["tie_word_embeddings"] = False
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name in COPIED_FILES:
        src = Path(reference.path) / name
        if src.is_file():
            shutil.copyfile(src, folder / name)
