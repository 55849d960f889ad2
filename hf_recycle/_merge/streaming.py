"""The streaming merge itself: blocks of rows in, merged blocks out, on every core.

:class:`StreamingMerger` cuts every tensor into blocks of rows (about
:data:`CPU_BLOCK_ELEMENTS` elements on the CPU) and lets a few worker threads take the
blocks in order. A worker reads one block from every input with ``pread`` into buffers
it reuses, combines them in float32 with the merge method (into a reused float32
buffer), casts it to the output dtype, checks it for NaN/Inf and hands it to a sink; the
shard writer writes it at its final offset with ``pwrite``. Reads, torch kernels and
writes release the GIL, so the workers run in parallel. Each runs torch on one intra-op
thread: blocks are independent, so the cores never wait on each other at OpenMP barriers
(which, on a busy machine, cost more than they gain).

Linear merges read a base shared by several LoRA adapters once per block and add all
the adapters' deltas with one matrix product: Σ cᵢ·Uᵢ@Vᵢ = [c₁U₁ | c₂U₂ | …] @ [V₁; V₂; …]
(see :meth:`~hf_recycle._merge.sources.TensorSource.low_rank_form`).

While the workers compute, a thread asks the OS to read the next tensors' file ranges
into the page cache (:class:`_ReadAhead`), so that reads from a cold disk overlap the
arithmetic. A sink that holds its tensors in memory (the search's disk tier) takes the
merged blocks cast straight into them.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import sys
import threading
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from hf_recycle._merge import fused
from hf_recycle._merge.compat import align_tied_heads, check_compatible
from hf_recycle._merge.methods import GroupWeights, MergeMethod, MethodParams, TensorStats, Workspace
from hf_recycle._merge.sources import LowRankForm, TensorSource
from hf_recycle._merge.writer import ShardedSafetensorsWriter, TensorEntry
from hf_recycle.errors import NonFiniteError
from hf_recycle.units import dtype_name

logger = logging.getLogger(__name__)

#: Elements per block of rows on the CPU: a worker's blocks (a few inputs, their float32 sum,
#: the cast output) stay in cache, and the per-block Python and system-call overhead stays
#: small (2**18 used the least CPU of 2**17..2**21 for a 4-way bfloat16 merge).
CPU_BLOCK_ELEMENTS = 1 << 18
#: Elements per block on a GPU: large transfers.
CUDA_BLOCK_ELEMENTS = 1 << 25
#: Rows per column of the concatenated low-rank factors in a block of a tensor with LoRA deltas:
#: the block's product ``U[rows] @ V`` reads all of ``V`` (Σr x in) for ``rows`` x in outputs, so
#: short blocks spend their time reading ``V`` (128-row blocks of 32 rank-8 adapters ran at a
#: third of the rate of whole-tensor products).
LOW_RANK_ROWS_PER_COLUMN = 8
#: The most elements of such a taller block (64 MB of float32 per worker).
LOW_RANK_MAX_BLOCK_ELEMENTS = 1 << 24
#: Most worker threads on the CPU (memory bandwidth is shared beyond that).
MAX_CPU_WORKERS = 8
#: Worker threads with a GPU: one reads and writes while the other's block is on the device.
CUDA_WORKERS = 2
#: Bytes of input files the engine asks the OS to read ahead of its workers (see :class:`_ReadAhead`).
READ_AHEAD_BYTES = 32 << 20


class TensorSink(Protocol):
    """Where merged blocks go: :class:`~hf_recycle._merge.writer.ShardedSafetensorsWriter` or any
    object with this method, called from several threads at once.

    A sink that holds the tensors in memory (the search's live model) may also have
    ``destination(key, row_start, rows) -> Tensor | None``: the tensor rows ``row_start``…
    of ``key`` are to be written to, which the engine then casts merged blocks straight
    into instead of calling :meth:`write` (one copy fewer); ``None`` for a tensor it writes
    itself.
    """

    def write(self, key: str, data: torch.Tensor, row_start: int = 0) -> None:
        """Take rows ``row_start``… of tensor ``key`` (``data`` is reused once this returns)."""


def default_workers(device: torch.device) -> int:
    """Worker threads for a merge on ``device``: torch's thread count on the CPU (at most 8)."""
    if device.type != "cpu":
        return CUDA_WORKERS
    return max(1, min(torch.get_num_threads(), MAX_CPU_WORKERS))


@dataclass(frozen=True)
class _Block:
    entry: TensorEntry
    rows: slice | None
    shape: tuple[int, ...]


@dataclass
class _TensorPlan:
    """What every block of one tensor needs, prepared once by the first worker that reaches it.

    ``sources``/``weights`` are the inputs to read and combine (for a weighted sum, inputs
    over one base are folded into that base with the sum of their weights), and ``u @ v``
    the low-rank deltas to add to the combined block.
    """

    sources: list[TensorSource]
    weights: list[float]
    base: TensorSource | None
    stats: TensorStats | None
    u: torch.Tensor | None = None
    v: torch.Tensor | None = None


class _Worker:
    """One worker thread's reused buffers and byte count."""

    def __init__(self, device: torch.device) -> None:
        self.io = Workspace("cpu")  # blocks read from disk, in their stored dtype
        self.work = Workspace(device)  # float32 arithmetic
        self.out = Workspace("cpu")  # the merged block in the output dtype
        self.input_bytes = 0


class _ReadAhead(threading.Thread):
    """Asks the OS to read the next tensors' bytes into the page cache while the workers compute.

    Tensor by tensor in the workers' order, at most ``window`` bytes ahead of the tensor
    they have reached, with ``posix_fadvise(POSIX_FADV_WILLNEED)``: no copy, and for bytes
    already cached only a lookup. A thread of its own, because the call waits while the
    kernel submits the reads. It is only a hint: where the OS refuses, reading goes on as
    without it.

    Args:
        tensors: Tensor names, in the order the workers take them, and the ``(file, offset,
            length)`` ranges each one's blocks read.
        window: The most bytes hinted ahead of the workers.
    """

    def __init__(self, tensors: dict[str, list[tuple[Path, int, int]]], window: int) -> None:
        super().__init__(name="hf-recycle-read-ahead", daemon=True)
        self._index = {key: i for i, key in enumerate(tensors)}
        self._tensors = list(tensors.values())
        self._window = window
        self._ahead = [0]  # bytes of tensors 0..i-1
        for ranges in self._tensors:
            self._ahead.append(self._ahead[-1] + sum(length for *_, length in ranges))
        self._reached = 0
        self._stopped = False
        self._changed = threading.Condition()

    def reached(self, key: str) -> None:
        """The workers took a block of tensor ``key``."""
        index = self._index[key]
        with self._changed:
            if index > self._reached:
                self._reached = index
                self._changed.notify()

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify()
        self.join()

    def _wait_for_room(self, index: int) -> bool:
        """Wait until tensor ``index`` is within the window; False when stopped or already reached."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._stopped or self._ahead[index] - self._ahead[self._reached] < self._window
            )
            return not self._stopped and index >= self._reached

    def run(self) -> None:
        try:
            for index, ranges in enumerate(self._tensors):
                if not self._wait_for_room(index):
                    if self._stopped:
                        return
                    continue
                for file, group in itertools.groupby(ranges, key=lambda r: r[0]):
                    # one descriptor at a time: a pool of many shards keeps its own open already
                    fd = os.open(file, os.O_RDONLY)
                    try:
                        for _, offset, length in group:
                            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
                    finally:
                        os.close(fd)
        except OSError as err:  # a hint only
            logger.debug("reading ahead stopped: %s", err)


class StreamingMerger:
    """Merges tensors from several sources, block by block on several threads, into a sink.

    Args:
        checkpoints: One source per checkpoint.
        base: The base source (``None`` for methods that do not use it).
        method: The merge method.
        weights: One weight per checkpoint, or a :class:`GroupWeights` (one row per tensor group).
        params: Method parameters.
        out_dtype: Output dtype (``None``: each tensor keeps the first checkpoint's dtype).
        device: Where the arithmetic runs.
        extra_sources: Sources checked for compatibility but not read (a base given to linear).
        block_elements: Elements per block of rows (default depends on the device).
        workers: Worker threads (default: :func:`default_workers`).
        low_rank_cache: A dict kept by the caller across merges of the same inputs (the
            search's disk tier, one merge per trial): each adapter's float32 factors are read
            from its file and converted once, then taken from it (``None``: read every time).
        compiled_sum: Sum bfloat16/float16 blocks of a method linear in its inputs with the
            native kernel (:mod:`~hf_recycle._merge.fused`; CPU only). ``None``: when the merge
            sums enough such bytes for compiling it to pay (5 GB; ``HF_RECYCLE_COMPILE`` overrides).

    Raises:
        IncompatibleCheckpointsError: Different architectures or tensor names.
        ShapeMismatchError: A tensor's shape differs between sources.
        MergeConfigError: A tensor has no weight group.
    """

    def __init__(
        self,
        checkpoints: Sequence[TensorSource],
        base: TensorSource | None,
        method: MergeMethod,
        weights: Sequence[float] | GroupWeights,
        params: MethodParams,
        *,
        out_dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
        extra_sources: Sequence[TensorSource] = (),
        block_elements: int | None = None,
        workers: int | None = None,
        low_rank_cache: dict[tuple[str, int], LowRankForm | None] | None = None,
        compiled_sum: bool | None = None,
    ) -> None:
        self.method = method
        self.low_rank_cache = low_rank_cache
        self.params = params
        self.out_dtype = out_dtype
        self.device = torch.device(device)
        self.block_elements = block_elements or (
            CUDA_BLOCK_ELEMENTS if self.device.type == "cuda" else CPU_BLOCK_ELEMENTS
        )
        self.workers = workers or default_workers(self.device)
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
                else reference.output_dtype(key),
            )
            for key in reference.keys()
        ]
        self.weights: list[float] | GroupWeights = (
            weights if isinstance(weights, GroupWeights) else [float(w) for w in weights]
        )
        self._group_of = (
            weights.assign([e.key for e in self.entries]) if isinstance(weights, GroupWeights) else None
        )
        self.input_bytes = 0
        self.output_bytes = sum(e.nbytes for e in self.entries)
        self._plans: dict[str, _TensorPlan] = {}
        self._blocks_left: Counter[str] = Counter()
        self._plan_lock = threading.Lock()
        self._stats_workspace = Workspace("cpu")
        self.native = self._use_native(compiled_sum)

    def _use_native(self, compiled_sum: bool | None) -> bool:
        """Whether blocks are summed by the native kernel (compiled here, before any worker starts)."""
        if self.device.type != "cpu" or not self.method.linear_in_delta:
            return False
        if compiled_sum is None:
            low = (torch.bfloat16, torch.float16)
            keys = [e.key for e in self.entries]
            summed = sum(s.nbytes(k) for s in self._readers for k in keys if s.dtype(k) in low)
            compiled_sum = fused.wanted(summed, fused.MERGE_COMPILE_MIN_BYTES)
        return compiled_sum and fused.available()

    def weights_for(self, key: str) -> list[float]:
        """The weights (one per checkpoint) tensor ``key`` is merged with."""
        if isinstance(self.weights, GroupWeights):
            assert self._group_of is not None
            return [float(w) for w in self.weights.rows[self._group_of[key]]]
        return self.weights

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
        """Merge every tensor into shards under ``folder``; return the file names."""
        writer = ShardedSafetensorsWriter(folder, self.entries, max_shard_size)
        try:
            self.stream(writer)
            return writer.close()
        except BaseException:
            writer.abort()
            raise

    def stream(self, sink: TensorSink, keys: Collection[str] | None = None) -> None:
        """Merge every tensor (or only ``keys``) and hand each merged block to ``sink.write`` (from worker threads).

        Non-float tensors (int buffers, bool masks) are copied from the first checkpoint.
        On the CPU, torch runs one intra-op thread per worker for the duration.

        Raises:
            NonFiniteError: A merged block holds NaN or Inf, or overflows the output dtype.
        """
        entries = self.entries if keys is None else [e for e in self.entries if e.key in keys]
        with one_cpu_thread(self.device), _progress(sum(e.nbytes for e in entries)) as bar:
            for entry in entries:
                if not self._mergeable(entry.key):
                    self._copy_tensor(entry, sink)
                    bar.update(entry.nbytes)
            self._merge_blocks(self._plan_blocks(entries), sink, bar)

    # --- blocks and workers ---------------------------------------------------------------

    def _blocks(self, shape: tuple[int, ...], low_rank_width: int = 0) -> list[slice | None]:
        """Row slices of a tensor of ``shape``; taller for one with low-rank deltas of total width ``low_rank_width``."""
        if not shape:
            return [None]
        row_numel = 1
        for dim in shape[1:]:
            row_numel *= dim
        elements = self.block_elements
        if low_rank_width:
            tall = LOW_RANK_ROWS_PER_COLUMN * low_rank_width * row_numel
            elements = max(elements, min(tall, LOW_RANK_MAX_BLOCK_ELEMENTS))
        rows = max(1, elements // max(row_numel, 1))
        return [slice(s, min(s + rows, shape[0])) for s in range(0, shape[0], rows)] or [slice(0, 0)]

    def _plan_blocks(self, entries: Sequence[TensorEntry]) -> list[_Block]:
        plan = []
        for entry in entries:
            if self._mergeable(entry.key):
                for rows in self._blocks(entry.shape, self._low_rank_width(entry.key)):
                    shape = entry.shape if rows is None else (rows.stop - rows.start, *entry.shape[1:])
                    plan.append(_Block(entry, rows, shape))
        return plan

    def _low_rank_width(self, key: str) -> int:
        """Columns of the concatenated factors a weighted sum adds to ``key`` (0: none), from headers."""
        if not self.method.weighted_sum:
            return 0
        return sum(source.low_rank_width(key) for source in self.checkpoints)

    def _merge_blocks(self, blocks: list[_Block], sink: TensorSink, bar: Any) -> None:
        if not blocks:
            return
        self._plans = {}
        self._blocks_left = Counter(b.entry.key for b in blocks)
        pending = iter(blocks)
        take_lock, bar_lock = threading.Lock(), threading.Lock()
        stop = threading.Event()

        def work() -> int:
            worker = _Worker(self.device)
            try:
                while not stop.is_set():
                    with take_lock:
                        block = next(pending, None)
                    if block is None:
                        break
                    if read_ahead is not None:
                        read_ahead.reached(block.entry.key)
                    self._merge_block(worker, block, sink)
                    self._finish(block.entry.key)
                    with bar_lock:
                        bar.update(math.prod(block.shape) * block.entry.dtype.itemsize)
            except BaseException:
                stop.set()  # the other workers stop after their current block
                raise
            return worker.input_bytes

        count = min(self.workers, len(blocks))
        read_ahead = self._read_ahead(blocks)
        try:
            if count == 1:
                self.input_bytes += work()
                return
            with ThreadPoolExecutor(count, thread_name_prefix="hf-recycle-merge") as pool:
                futures = [pool.submit(work) for _ in range(count)]
                try:
                    wait(futures, return_when=FIRST_EXCEPTION)
                finally:
                    stop.set()  # also on KeyboardInterrupt in this thread
            for future in futures:
                self.input_bytes += future.result()  # re-raises a worker's error
        finally:
            if read_ahead is not None:
                read_ahead.stop()

    def _read_ahead(self, blocks: Sequence[_Block]) -> _ReadAhead | None:
        """Start reading ahead the files of ``blocks``' tensors (``None`` where the OS has no hint)."""
        if not hasattr(os, "posix_fadvise"):
            return None
        tensors: dict[str, list[tuple[Path, int, int]]] = {}
        for block in blocks:
            if block.entry.key not in tensors:  # the inputs over one base share its ranges
                ranges = {r for source in self._readers for r in source.file_ranges(block.entry.key)}
                tensors[block.entry.key] = sorted(ranges)
        if not any(tensors.values()):
            return None
        read_ahead = _ReadAhead(tensors, READ_AHEAD_BYTES)
        read_ahead.start()
        return read_ahead

    def _merge_block(self, worker: _Worker, block: _Block, sink: TensorSink) -> None:
        """Merge one block, cast it to the output dtype and hand it to ``sink``."""
        entry, rows, shape = block.entry, block.rows, block.shape
        key = entry.key
        plan = self._plan(entry)
        tensors = [self._read(worker, s, f"in{i}", key, rows, shape) for i, s in enumerate(plan.sources)]
        base = self._read(worker, plan.base, "base", key, rows, shape) if plan.base is not None else None
        if self.device.type == "cuda":
            tensors = [t.to(self.device, non_blocking=True) for t in tensors]
            base = base.to(self.device, non_blocking=True) if base is not None else None
        row_start = 0 if rows is None else rows.start
        destination = getattr(sink, "destination", None)
        target = destination(key, row_start, shape[0] if shape else 0) if destination is not None else None
        if target is not None and (target.dtype != entry.dtype or tuple(target.shape) != shape):
            target = None
        low_rank = plan.u is not None and plan.v is not None
        if self.native and not low_rank:  # summed and cast into the output in one pass
            result = (
                target if target is not None else worker.out.get(f"out:{entry.dtype}", shape, entry.dtype)
            )
            bad = self._native_sum(result, tensors, base, plan.weights)
            if bad is not None:
                if bad:
                    _check_finite(result, key, self.method.name)  # raises, naming the tensor
                if target is None:
                    sink.write(key, result, row_start)
                return
        merged = worker.work.get("out", shape)
        if not (self.native and self._native_sum(merged, tensors, base, plan.weights) is not None):
            merged = self.method.combine(
                tensors, plan.weights, base, self.params, key,
                rows=rows, numel=entry.numel, stats=plan.stats, out=merged, workspace=worker.work,
            )  # fmt: skip
        if low_rank:
            u = plan.u if rows is None else plan.u[rows]
            merged.view(u.shape[0], plan.v.shape[1]).addmm_(u, plan.v)
        if target is not None:
            _check_finite(target.copy_(merged), key, self.method.name)
            return
        result = worker.out.get(f"out:{entry.dtype}", shape, entry.dtype).copy_(merged)
        _check_finite(result, key, self.method.name)
        sink.write(key, result, row_start)

    def _native_sum(
        self, out: torch.Tensor, tensors: list[torch.Tensor], base: torch.Tensor | None, weights: list[float]
    ) -> int | None:
        """The block's weighted sum by the native kernel (:mod:`~hf_recycle._merge.fused`), into ``out``.

        A weighted-sum method's own arithmetic (Σ wᵢxᵢ, then ÷ Σ wᵢ when normalizing: the same
        bits as :meth:`~hf_recycle._merge.methods.MergeMethod.combine`), or a method linear in
        the task vectors as Σ aᵢxᵢ + b·base. ``None`` (nothing written) where it does not apply
        (float32 inputs, mixed dtypes); else 1 where ``out`` holds NaN or Inf, 0 where not.
        """
        if self.method.weighted_sum:  # the base, if read, is not part of the sum
            total = float(sum(weights))
            divisor = total if self.params.normalize and total != 1.0 else 1.0
            rows, coefficients = tensors, list(weights)
        elif base is not None:
            a, b = self.method.linear_coefficients(weights, self.params)
            rows, coefficients, divisor = [*tensors, base], [*a, b], 1.0
        else:
            return None
        if not out.is_contiguous() or any(not t.is_contiguous() for t in rows):
            return None
        return fused.weighted_sum(out.view(-1), [t.view(-1) for t in rows], coefficients, divisor, threads=1)

    def _read(
        self,
        worker: _Worker,
        source: TensorSource,
        slot: str,
        key: str,
        rows: slice | None,
        shape: tuple[int, ...],
    ) -> torch.Tensor:
        dtype = source.dtype(key)
        if source.computes_on_device:  # LoRA: base + ΔW computed on the merge device
            tensor = source.read(key, rows, device=self.device)
        else:
            tensor = source.read_into(key, worker.io.get(f"{slot}:{dtype}", shape, dtype), rows)
        worker.input_bytes += tensor.numel() * dtype.itemsize
        return tensor

    def _copy_tensor(self, entry: TensorEntry, sink: TensorSink) -> None:
        """A non-float tensor (int buffer, bool mask): copied from the first checkpoint."""
        sink.write(entry.key, self.checkpoints[0].read(entry.key).to(entry.dtype))
        self.input_bytes += sum(s.nbytes(entry.key) for s in self._readers)

    # --- per-tensor plans -----------------------------------------------------------------

    def _plan(self, entry: TensorEntry) -> _TensorPlan:
        with self._plan_lock:  # one plan at a time: TIES stats hold a float32 copy of the tensor
            plan = self._plans.get(entry.key)
            if plan is None:
                plan = self._plans[entry.key] = self._make_plan(entry)
            return plan

    def _finish(self, key: str) -> None:
        """Count a block of ``key`` as written; drop the tensor's plan after its last block."""
        with self._plan_lock:
            self._blocks_left[key] -= 1
            if self._blocks_left[key] <= 0:
                self._plans.pop(key, None)

    def _make_plan(self, entry: TensorEntry) -> _TensorPlan:
        weights = self.weights_for(entry.key)
        stats = self._tensor_stats(entry) if self.method.needs_stats(self.params) else None
        plan = _TensorPlan(list(self.checkpoints), weights, self.base, stats)
        if self.method.weighted_sum:
            _fold_low_rank(plan, entry.key, self.device, self.params.normalize, self.low_rank_cache)
        return plan

    def _tensor_stats(self, entry: TensorEntry) -> TensorStats:
        """Whole-tensor statistics of |τᵢ| (TIES thresholds), computed on the CPU block by block."""
        key, shape = entry.key, entry.shape
        base = self.base
        assert base is not None
        ws = self._stats_workspace
        magnitude = ws.get("stats:abs", shape)
        thresholds = []
        for source in self.checkpoints:
            for rows in self._blocks(shape):
                block_shape = shape if rows is None else (rows.stop - rows.start, *shape[1:])
                x = source.read_into(
                    key, ws.get(f"stats:in:{source.dtype(key)}", block_shape, source.dtype(key)), rows
                )
                b = base.read_into(
                    key, ws.get(f"stats:base:{base.dtype(key)}", block_shape, base.dtype(key)), rows
                )
                target = magnitude if rows is None else magnitude[rows]
                target.copy_(x).sub_(b).abs_()
            thresholds.append(self.method.tensor_stats([magnitude], self.params).thresholds[0])
        return TensorStats(tuple(thresholds))


def _fold_low_rank(
    plan: _TensorPlan,
    key: str,
    device: torch.device,
    normalize: bool,
    cache: dict[Any, Any] | None = None,
) -> None:
    """Rewrite a weighted-sum plan so that inputs over one base read that base once.

    Σ wᵢ(b + UᵢVᵢ) = (Σ wᵢ)·b + Σ wᵢUᵢVᵢ: each base becomes one input with the sum of its
    inputs' weights, and the deltas (divided by the total weight when normalizing, as the
    combined block is) become one pair of concatenated factors. ``cache`` keeps each
    input's form and the concatenated factors for the next merge of the same inputs, which
    then only scales the columns of ``U``.
    """
    sources: list[TensorSource] = []
    weights: list[float] = []
    slot_of: dict[int, int] = {}
    deltas: list[tuple[int, float, LowRankForm]] = []
    folded = False
    for index, (source, weight) in enumerate(zip(plan.sources, plan.weights, strict=True)):
        if cache is None:
            form = source.low_rank_form(key, device)
        elif (key, index) in cache:
            form = cache[(key, index)]
        else:
            form = cache[(key, index)] = source.low_rank_form(key, device)
        if form is None:
            sources.append(source)
            weights.append(weight)
            continue
        folded = True
        slot = slot_of.get(id(form.base))
        if slot is None:
            slot_of[id(form.base)] = len(sources)
            sources.append(form.base)
            weights.append(weight)
        else:
            weights[slot] += weight
        if form.u is not None and form.v is not None:
            deltas.append((index, weight, form))
    if not folded:
        return
    total = float(sum(weights))
    scale = 1.0 / total if normalize and total != 1.0 else 1.0
    if scale != 1.0 and len(weights) == 1:  # (w·b)/w is b: skip the two passes over the block
        weights = [1.0]
    plan.sources, plan.weights = sources, weights
    if cache is not None and deltas and all(w != 0.0 for _, w, _ in deltas):
        plan.u, plan.v = _scaled_concat(cache, key, deltas, scale)
        return
    nonzero = [(w, form) for _, w, form in deltas if w != 0.0]
    if nonzero:
        plan.u = torch.cat([form.u * (w * scale) for w, form in nonzero], dim=1)  # type: ignore[operator]
        plan.v = torch.cat([form.v for _, form in nonzero], dim=0)  # type: ignore[misc]


def _scaled_concat(
    cache: dict[Any, Any], key: str, deltas: list[tuple[int, float, LowRankForm]], scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[w₁·s·U₁ | …]`` and ``[V₁; …]`` from concatenated factors kept in ``cache``.

    The first call concatenates the inputs' factors and keeps each input's form as views
    of them (the memory is held once); later calls scale the columns of ``U`` in one pass.
    """
    kept = cache.get((key, "concat"))
    if kept is None:
        u = torch.cat([form.u for _, _, form in deltas], dim=1)  # type: ignore[misc]
        v = torch.cat([form.v for _, _, form in deltas], dim=0)  # type: ignore[misc]
        start = 0
        for index, _, form in deltas:
            stop = start + form.u.shape[1]  # type: ignore[union-attr]
            cache[(key, index)] = LowRankForm(form.base, u[:, start:stop], v[start:stop])
            start = stop
        kept = cache[(key, "concat")] = (u, v)
    u, v = kept
    widths = torch.tensor([form.u.shape[1] for _, _, form in deltas], device=u.device)  # type: ignore[union-attr]
    columns = torch.tensor([w * scale for _, w, _ in deltas], dtype=torch.float32, device=u.device)
    return u * columns.repeat_interleave(widths), v


def _check_finite(tensor: torch.Tensor, key: str, method: str) -> None:
    """Raise :class:`NonFiniteError` if ``tensor`` (a merged block, cast) holds NaN or Inf.

    One sum in the common case (reductions accumulate in float32 and are vectorized for
    every dtype); the exact element check runs only when the sum is not finite.
    """
    if math.isfinite(float(tensor.sum())):
        return
    if bool(torch.isfinite(tensor).all()):
        return  # finite values whose sum overflowed
    cast = f" after casting to {dtype_name(tensor.dtype)}" if tensor.dtype != torch.float32 else ""
    raise NonFiniteError(
        f"merging tensor '{key}' with {method} produced NaN or Inf values{cast}: check the inputs for "
        "NaN/Inf and the weights/lambda for overflow, or use --dtype float32; nothing was written"
    )


@contextlib.contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """One torch intra-op thread while on the CPU: the workers (or the small m × Σr panels and
    r × r SVDs of a LoRA output) are the parallelism, and OpenMP barriers on a busy machine
    make small ops 10-50x slower."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _progress(total: int) -> Iterator[Any]:
    from tqdm.auto import tqdm

    enabled = sys.stderr.isatty() and logger.isEnabledFor(logging.INFO)
    with tqdm(
        total=total, unit="B", unit_scale=True, desc="merging", disable=not enabled, leave=False
    ) as bar:
        yield bar
