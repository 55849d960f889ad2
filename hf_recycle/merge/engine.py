"""The streaming merge: checkpoints in, one merged checkpoint folder out.

:func:`merge` is the public entry point (``hf_recycle.merge``). It opens the inputs
(:mod:`hf_recycle.merge.inputs`), checks that they can be merged, and lets
:class:`StreamingMerger` combine them one tensor at a time, a block of rows at a time,
with reused float32 buffers, writing each block straight into its place in the output
shards (:mod:`hf_recycle.merge.writer`). Memory holds a few blocks per checkpoint, not
whole tensors (TIES with density < 1 also holds one float32 copy of the tensor being
trimmed). The folder is assembled in a temporary sibling and renamed into place only
when everything succeeded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hf_recycle._version import __version__
from hf_recycle.errors import (
    IncompatibleCheckpointsError,
    MergeConfigError,
    NonFiniteError,
    OutputExistsError,
    ShapeMismatchError,
)
from hf_recycle.hub.lock import write_lock
from hf_recycle.merge.inputs import CheckpointLike, MergeInputs, expand_checkpoints, open_inputs
from hf_recycle.merge.methods import (
    MergeMethod,
    MethodParams,
    TensorStats,
    Workspace,
    check_weights,
    get_method,
    resolve_params,
)
from hf_recycle.merge.sources import TensorSource, TiedHeadSource
from hf_recycle.merge.writer import ShardedSafetensorsWriter, TensorEntry
from hf_recycle.units import dtype_name, parse_size, torch_dtype

logger = logging.getLogger(__name__)

#: Elements per block of rows: small enough for the blocks of 4-8 inputs to stay in cache.
CPU_BLOCK_ELEMENTS = 1 << 20
CUDA_BLOCK_ELEMENTS = 1 << 25

#: Files copied from the base (or first) checkpoint next to the merged weights.
COPIED_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "chat_template.jinja",
    "chat_template.json",
)

MERGE_CONFIG_FILE = "merge_config.json"


@dataclass(frozen=True)
class MergeResult:
    """What a merge wrote.

    Attributes:
        output: The merged checkpoint folder.
        files: Weight files written (shards, then the index when sharded).
        method: Merge method name.
        num_tensors: Tensors written.
        input_bytes: Bytes of tensor data read from the inputs.
        output_bytes: Bytes of tensor data written.
        seconds: Wall time of the merge.
        device: Where the arithmetic ran (``cpu`` or ``cuda``).
    """

    output: Path
    files: tuple[str, ...]
    method: str
    num_tensors: int
    input_bytes: int
    output_bytes: int
    seconds: float
    device: str


def merge(
    checkpoints: Sequence[CheckpointLike],
    output: str | Path,
    *,
    method: str = "linear",
    weights: Sequence[float] | None = None,
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
        weights: One weight per checkpoint (default: uniform, 1/n each).
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
            base: one PEFT adapter holding Σ cᵢ·ΔWᵢ, see :mod:`hf_recycle.merge.lora_output`).
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
    """
    started = time.perf_counter()
    merge_method = get_method(method)
    params = resolve_params(merge_method, density=density, lambda_=lambda_, normalize=normalize, seed=seed)
    if not checkpoints:
        raise MergeConfigError("no checkpoints to merge: pass at least one checkpoint folder")
    # Hub specs: globs and @history become one pinned checkpoint each, so weights line up.
    checkpoints = expand_checkpoints(checkpoints, endpoint=endpoint, token=token)
    count = len(checkpoints)
    weight_list = check_weights(
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
            from hf_recycle.merge.lora_output import merge_to_lora_folder, parse_lora_rank

            return merge_to_lora_folder(
                inputs, output, method=merge_method, weights=weight_list, params=params,
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
            weight_list,
            params,
            out_dtype=out_dtype,
            device=run_device,
            extra_sources=[inputs.base] if inputs.base is not None and not merge_method.needs_base else [],
        )
        logger.info(
            "merging %d checkpoints with %s (%s) on %s into %s",
            count,
            merge_method.name,
            _describe(merge_method, params, weight_list),
            run_device,
            output,
        )
        with staging_folder(output, overwrite) as folder:
            files = merger.run(folder, shard_cap)
            reference = inputs.base or inputs.checkpoints[0]
            _write_side_files(folder, reference, merger)
            record = {
                "hf_recycle_version": __version__,
                "method": merge_method.name,
                "pretty_name": merge_method.pretty_name,
                "reference_url": merge_method.reference_url,
                "parameters": {
                    "weights": weight_list,
                    "density": params.density if merge_method.uses_density else None,
                    "lambda": params.lambda_ if merge_method.needs_base else None,
                    "normalize": params.normalize,
                    "seed": params.seed,
                    "dtype": dtype if out_dtype is None else dtype_name(out_dtype),
                    "max_shard_size": shard_cap,
                },
                "checkpoints": [r for r in inputs.records if r.get("role") != "base"],
                "base": next((r for r in inputs.records if r.get("role") == "base"), None),
                "tie_word_embeddings": merger.tied_output,
                "files": files,
            }
            (folder / MERGE_CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")
            write_lock(inputs.pins, folder, base=inputs.base_pin)  # checkpoints.lock.json
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
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MergeConfigError(
                f"--device {device} was asked for but no CUDA device is available: use --device cpu or auto"
            )
        return torch.device(device)
    raise MergeConfigError(f"device '{device}' is not supported: use auto, cpu or cuda")


class StreamingMerger:
    """Merges tensors from several sources block by block into a sharded writer.

    Args:
        checkpoints: One source per checkpoint.
        base: The base source (``None`` for methods that do not use it).
        method: The merge method.
        weights: One weight per checkpoint.
        params: Method parameters.
        out_dtype: Output dtype (``None``: each tensor keeps the first checkpoint's dtype).
        device: Where the arithmetic runs.
        extra_sources: Sources checked for compatibility but not read (a base given to linear).
        block_elements: Elements per block of rows (default depends on the device).
    """

    def __init__(
        self,
        checkpoints: Sequence[TensorSource],
        base: TensorSource | None,
        method: MergeMethod,
        weights: Sequence[float],
        params: MethodParams,
        *,
        out_dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
        extra_sources: Sequence[TensorSource] = (),
        block_elements: int | None = None,
    ) -> None:
        self.method = method
        self.weights = list(weights)
        self.params = params
        self.out_dtype = out_dtype
        self.device = torch.device(device)
        self.block_elements = block_elements or (
            CUDA_BLOCK_ELEMENTS if self.device.type == "cuda" else CPU_BLOCK_ELEMENTS
        )
        sources = [*checkpoints, *([base] if base is not None else []), *extra_sources]
        aligned, self.tied_output = align_tied_heads(sources)
        self.checkpoints = aligned[: len(checkpoints)]
        self.base = aligned[len(checkpoints)] if base is not None else None
        check_compatible(aligned)
        self._readers = [*self.checkpoints, *([self.base] if self.base is not None else [])]
        reference = self.checkpoints[0]
        self.entries = [
            TensorEntry(
                key,
                reference.shape(key),
                self.out_dtype
                if self.out_dtype is not None and self._mergeable(key)
                else getattr(reference, "output_dtype", reference.dtype)(key),  # LoRA: base's dtype
            )
            for key in reference.keys()
        ]
        self.input_bytes = 0
        self.output_bytes = sum(e.nbytes for e in self.entries)
        self._io = Workspace("cpu")
        self._work = Workspace(self.device)
        self._out = Workspace("cpu")

    def _mergeable(self, key: str) -> bool:
        return all(s.dtype(key).is_floating_point for s in self._readers)

    @property
    def output_dtype_name(self) -> str:
        """The dtype most of the output bytes have (for ``config.json``)."""
        sizes: dict[torch.dtype, int] = {}
        for entry in self.entries:
            if entry.dtype.is_floating_point:
                sizes[entry.dtype] = sizes.get(entry.dtype, 0) + entry.nbytes
        return dtype_name(max(sizes, key=sizes.get)) if sizes else "float32"  # type: ignore[arg-type]

    def run(self, folder: Path, max_shard_size: int) -> list[str]:
        """Merge every tensor into shards under ``folder``; return the file names.

        Reading the next block, combining the current one and writing the previous one
        overlap (one reader and one writer thread; ``pread``/``pwrite`` release the GIL).
        On the CPU the arithmetic runs on one intra-op thread for the duration of the
        merge: the I/O threads use the other cores, and OpenMP barriers on a busy
        machine cost far more than a second arithmetic thread gains.
        """
        writer = ShardedSafetensorsWriter(folder, self.entries, max_shard_size)
        total = sum(s.nbytes(e.key) for e in self.entries for s in self._readers)
        threads = torch.get_num_threads()
        if self.device.type == "cpu":
            torch.set_num_threads(1)
        try:
            with (
                _progress(total) as bar,
                ThreadPoolExecutor(1, thread_name_prefix="hf-recycle-read") as reader,
                ThreadPoolExecutor(1, thread_name_prefix="hf-recycle-write") as writes,
            ):
                pending: list[Future] = []
                try:
                    for entry in self.entries:
                        if not self._mergeable(entry.key):
                            self._copy_tensor(entry, writer, bar)
                    self._merge_blocks(writer, bar, reader, writes, pending)
                finally:
                    for future in pending:  # let in-flight writes finish before the files close
                        future.cancel()
                        with contextlib.suppress(BaseException):
                            future.result()
            return writer.close()
        except BaseException:
            writer.abort()
            raise
        finally:
            torch.set_num_threads(threads)

    def _blocks(self, shape: tuple[int, ...]) -> list[slice | None]:
        if not shape:
            return [None]
        row_numel = 1
        for dim in shape[1:]:
            row_numel *= dim
        rows = max(1, self.block_elements // max(row_numel, 1))
        return [slice(s, min(s + rows, shape[0])) for s in range(0, shape[0], rows)] or [slice(0, 0)]

    def _read(
        self, source: TensorSource, slot: str, key: str, rows: slice | None, shape: tuple[int, ...]
    ) -> torch.Tensor:
        dtype = source.dtype(key)
        if getattr(source, "computes_on_device", False):  # LoRA: base + ΔW computed on the merge device
            tensor = source.read(key, rows, device=self.device)
            self.input_bytes += tensor.numel() * dtype.itemsize
            return tensor
        buf = self._io.get(f"{slot}:{dtype}", shape, dtype)
        source.read_into(key, buf, rows)
        self.input_bytes += buf.numel() * dtype.itemsize
        return buf

    def _copy_tensor(self, entry: TensorEntry, writer: ShardedSafetensorsWriter, bar: Any) -> None:
        """A non-float tensor (int buffer, bool mask): copied from the first checkpoint."""
        writer.write(entry.key, self.checkpoints[0].read(entry.key).to(entry.dtype))
        nbytes = sum(s.nbytes(entry.key) for s in self._readers)
        self.input_bytes += nbytes
        bar.update(nbytes)

    def _plan_blocks(self) -> list[tuple[TensorEntry, slice | None, tuple[int, ...]]]:
        plan = []
        for entry in self.entries:
            if self._mergeable(entry.key):
                for rows in self._blocks(entry.shape):
                    shape = entry.shape if rows is None else (rows.stop - rows.start, *entry.shape[1:])
                    plan.append((entry, rows, shape))
        return plan

    def _read_block(self, parity: int, entry: TensorEntry, rows: slice | None, shape: tuple[int, ...]):
        """Every input's rows of one block, into the buffer set ``parity`` (runs on the reader thread)."""
        key = entry.key
        before = self.input_bytes
        tensors = [self._read(s, f"in{i}.{parity}", key, rows, shape) for i, s in enumerate(self.checkpoints)]
        base = self._read(self.base, f"base.{parity}", key, rows, shape) if self.base is not None else None
        return tensors, base, self.input_bytes - before

    def _merge_blocks(self, writer, bar, reader, writes, pending: list[Future]) -> None:
        plan = self._plan_blocks()
        if not plan:
            return
        cuda = self.device.type == "cuda"
        next_read = reader.submit(self._read_block, 0, *plan[0])
        stats: TensorStats | None = None
        for j, (entry, rows, shape) in enumerate(plan):
            key = entry.key
            if rows is None or rows.start == 0:
                stats = self._tensor_stats(entry) if self.method.needs_stats(self.params) else None
            tensors, base, nbytes = next_read.result()
            # the buffers of block j + 1 are those of block j - 1, whose arithmetic is done
            if j + 1 < len(plan):
                next_read = reader.submit(self._read_block, (j + 1) % 2, *plan[j + 1])
            if cuda:
                tensors = [t.to(self.device, non_blocking=True) for t in tensors]
                base = base.to(self.device, non_blocking=True) if base is not None else None
            merged = self.method.combine(
                tensors, self.weights, base, self.params, key,
                rows=rows, numel=entry.numel, stats=stats,
                out=self._work.get("out", shape), workspace=self._work,
            )  # fmt: skip
            if len(pending) >= 2:  # the output buffer about to be reused must be on disk
                pending.pop(0).result()
            result = self._out.get(f"out.{j % 2}:{entry.dtype}", shape, entry.dtype).copy_(merged)
            _check_finite(result, key, self.method.name)
            pending.append(writes.submit(writer.write, key, result, 0 if rows is None else rows.start))
            bar.update(nbytes)
        while pending:
            pending.pop(0).result()

    def _tensor_stats(self, entry: TensorEntry) -> TensorStats:
        """Whole-tensor statistics of |τᵢ| (TIES thresholds), computed on the CPU block by block."""
        key, shape = entry.key, entry.shape
        base = self.base
        assert base is not None
        magnitude = self._io.get("stats:abs", shape)
        thresholds = []
        for source in self.checkpoints:
            for rows in self._blocks(shape):
                block_shape = shape if rows is None else (rows.stop - rows.start, *shape[1:])
                x = source.read_into(
                    key, self._io.get(f"stats:in:{source.dtype(key)}", block_shape, source.dtype(key)), rows
                )
                b = base.read_into(
                    key, self._io.get(f"stats:base:{base.dtype(key)}", block_shape, base.dtype(key)), rows
                )
                target = magnitude if rows is None else magnitude[rows]
                target.copy_(x).sub_(b).abs_()
            thresholds.append(self.method.tensor_stats([magnitude], self.params).thresholds[0])
        return TensorStats(tuple(thresholds))


def _check_finite(tensor: torch.Tensor, key: str, method: str) -> None:
    """Raise :class:`NonFiniteError` if ``tensor`` holds NaN or Inf (one cheap sum in the common case)."""
    if math.isfinite(float(tensor.sum(dtype=torch.float32))):
        return
    if bool(torch.isfinite(tensor).all()):
        return  # finite values whose sum overflowed
    cast = f" after casting to {dtype_name(tensor.dtype)}" if tensor.dtype != torch.float32 else ""
    raise NonFiniteError(
        f"merging tensor '{key}' with {method} produced NaN or Inf values{cast}: check the inputs for "
        "NaN/Inf and the weights/lambda for overflow, or use --dtype float32; nothing was written"
    )


def align_tied_heads(sources: Sequence[TensorSource]) -> tuple[list[TensorSource], bool]:
    """Make tied and untied checkpoints mergeable; return ``(sources, output_is_tied)``.

    A checkpoint saved with ``tie_word_embeddings`` has no output head on disk. When
    every checkpoint is tied, the output stays tied. When some are untied, the tied ones
    are wrapped in :class:`TiedHeadSource` so that their effective head (the input
    embedding) is merged with the others' heads, and the output is untied.
    """
    tied = [bool(s.config.get("tie_word_embeddings", True)) for s in sources]
    if all(tied):
        return list(sources), True
    if not any(tied):
        return list(sources), False
    untied_keys = set().union(*(s.keys() for s, t in zip(sources, tied, strict=True) if not t))
    pairs = _tied_pairs(sources[tied.index(True)].config)
    result = list(sources)
    for i, source in enumerate(sources):
        if not tied[i]:
            continue
        keys = set(source.keys())
        for head, embed in pairs:
            if head in untied_keys and head not in keys and embed in keys:
                logger.info("'%s' has tied embeddings: using '%s' as its '%s'", source.name, embed, head)
                result[i] = TiedHeadSource(result[i], head, embed)
    return result, False


def _tied_pairs(config: dict[str, Any]) -> list[tuple[str, str]]:
    """``(head, embedding)`` name pairs tied in this architecture (from transformers, else common names)."""
    pairs: list[tuple[str, str]] = []
    try:
        import transformers
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        for name in [
            *(config.get("architectures") or []),
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.get("model_type")),
        ]:
            tied = getattr(getattr(transformers, name or "", None), "_tied_weights_keys", None)
            if isinstance(tied, dict):
                pairs.extend(tied.items())
    except Exception as exc:  # pragma: no cover - fall back to the usual names
        logger.debug("could not read tied keys from transformers: %s", exc)
    pairs += [
        ("lm_head.weight", "model.embed_tokens.weight"),
        ("lm_head.weight", "transformer.wte.weight"),
        ("lm_head.weight", "model.decoder.embed_tokens.weight"),
        ("embed_out.weight", "gpt_neox.embed_in.weight"),
    ]
    return list(dict.fromkeys(pairs))


def _names(keys: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(f"'{k}'" for k in keys[:limit])
    return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


def check_compatible(sources: Sequence[TensorSource]) -> None:
    """Raise if the sources cannot be merged tensor by tensor.

    Raises:
        IncompatibleCheckpointsError: Different architectures, or tensor names missing
            from some checkpoints (the message lists what is missing where).
        ShapeMismatchError: A tensor's shape differs (each shape and checkpoint named).
    """
    ref = sources[0]
    archs = [(tuple(s.config.get("architectures") or ()), s.config.get("model_type")) for s in sources]
    if len(set(archs)) > 1:
        described = "; ".join(
            f"'{s.name}': {', '.join(a) or '?'} ({t})" for s, (a, t) in zip(sources, archs, strict=True)
        )
        raise IncompatibleCheckpointsError(
            f"the checkpoints have different architectures ({described}): only checkpoints of the same model "
            "(fine-tunes of one base) can be merged"
        )
    ref_keys = ref.keys()
    ref_set = set(ref_keys)
    problems = []
    for source in sources[1:]:
        keys = source.keys()
        have = set(keys)
        missing = [k for k in ref_keys if k not in have]
        extra = [k for k in keys if k not in ref_set]
        if missing:
            problems.append(
                f"'{source.name}' lacks {len(missing)} tensor(s) that '{ref.name}' has: {_names(missing)}"
            )
        if extra:
            problems.append(
                f"'{source.name}' has {len(extra)} tensor(s) that '{ref.name}' lacks: {_names(extra)}"
            )
    if problems:
        raise IncompatibleCheckpointsError(
            "the checkpoints do not have the same tensors: "
            + "; ".join(problems)
            + ". Merge only checkpoints of the same architecture and size."
        )
    mismatches = []
    for key in ref_keys:
        shapes = [tuple(s.shape(key)) for s in sources]
        if len(set(shapes)) > 1:
            mismatches.append(
                f"tensor '{key}' has shape "
                + ", ".join(f"{_shape(sh)} in '{s.name}'" for s, sh in zip(sources, shapes, strict=True))
            )
    if mismatches:
        more = f" (and {len(mismatches) - 3} more tensors)" if len(mismatches) > 3 else ""
        raise ShapeMismatchError(
            "shape mismatch: "
            + "; ".join(mismatches[:3])
            + more
            + ". The checkpoints come from models of different sizes (or a resized vocabulary) and cannot be merged."
        )


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _describe(method: MergeMethod, params: MethodParams, weights: Sequence[float]) -> str:
    parts = ["weights " + ", ".join(f"{w:g}" for w in weights), f"normalize {params.normalize}"]
    if method.uses_density:
        parts.append(f"density {params.density:g}")
    if method.needs_base:
        parts.append(f"lambda {params.lambda_:g}")
    if method.name.startswith("dare"):
        parts.append(f"seed {params.seed}")
    return ", ".join(parts)


def _check_output_location(output: Path, inputs: MergeInputs) -> None:
    target = output.resolve()
    for source in [*inputs.checkpoints, *([inputs.base] if inputs.base else [])]:
        path = Path(source.path).resolve()
        if path == target or target in path.parents:
            raise MergeConfigError(
                f"output folder '{output}' holds the input checkpoint '{source.name}': choose another output folder"
            )


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


@contextlib.contextmanager
def staging_folder(output: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary sibling of ``output`` that is renamed into place if the block succeeds.

    On any exception (including KeyboardInterrupt) the temporary folder is deleted and
    ``output`` is left as it was.
    """
    parent = output.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=parent))
    try:
        yield tmp
        if output.exists() or output.is_symlink():
            if not overwrite:
                raise OutputExistsError(
                    f"output folder '{output}' appeared during the merge: pass --overwrite to replace it"
                )
            trash = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".old", dir=parent))
            os.rename(output, trash / "old")
            os.rename(tmp, output)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def _progress(total: int) -> Iterator[Any]:
    from tqdm.auto import tqdm

    enabled = sys.stderr.isatty() and logger.isEnabledFor(logging.INFO)
    with tqdm(
        total=total, unit="B", unit_scale=True, desc="merging", disable=not enabled, leave=False
    ) as bar:
        yield bar
