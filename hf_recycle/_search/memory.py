"""The memory plan of a search: what the candidate model needs, what the process has, which tier fits.

Computed after the checkpoints are opened (only their headers are read) and before the
live model is built, so a pool that does not fit fails with a message instead of being
killed by the kernel. Tiers, fastest first:

- ``device``: every checkpoint's tensors stacked where the live model runs;
- ``host``: the stacks in host RAM, the live model on a GPU: each candidate is computed
  on the host a chunk at a time and copied into the live model, overlapped
  (:mod:`~hf_recycle._search.host_tier`); on a CPU-only run this is the ``device`` tier
  (host RAM is the device);
- ``disk``: nothing resident; each trial streams the K inputs from their files into the
  live model (:class:`~hf_recycle._search.streamed.StreamedModel`; the page cache caches).

What the process has is the smaller of the host's ``MemAvailable`` and the room left
under the memory limits of this process's cgroup (v2 ``memory.max``, v1
``memory.limit_in_bytes``, of its group and the groups above it), and the free memory
of the GPU when the live model is on one. Every search worker builds its own copy.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_recycle.errors import MergeConfigError, SearchMemoryError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from hf_recycle._merge.sources import TensorSource

logger = logging.getLogger(__name__)

TIERS = ("device", "host", "disk")
#: Fraction of the available memory a plan may use: the scorer's activations, the
#: tokenizer, Python and the allocator's slack need the rest.
HEADROOM = 0.85
#: A cgroup v1 limit at or above this is "no limit" (the kernel writes ~2**63).
_NO_LIMIT = 1 << 60


def _gb(n: int | None) -> str:
    if n is None:
        return "unknown"
    if abs(n) >= 10**9:
        return f"{n / 1e9:.2f} GB"
    return f"{n / 1e6:.1f} MB" if abs(n) >= 10**6 else f"{n / 1e3:.1f} kB"


# --- what the process has ---------------------------------------------------------------


def _read_int(file: Path) -> int | None:
    try:
        text = file.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _inactive_file(stat: Path, key: str) -> int:
    """Reclaimable page cache from a cgroup's ``memory.stat`` (0 when unknown)."""
    try:
        for line in stat.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def mem_available(proc_root: str | Path = "/proc") -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (``None`` when unreadable)."""
    try:
        for line in (Path(proc_root) / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _own_groups(proc_root: Path) -> tuple[str | None, str | None]:
    """This process's (cgroup v2 path, cgroup v1 memory path) from ``/proc/self/cgroup``."""
    v2 = v1 = None
    try:
        lines = (proc_root / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _chain(mount: Path, path: str) -> list[Path]:
    """The group's folder and those above it up to ``mount`` (just ``mount`` inside a namespace
    whose path is not visible)."""
    rel = Path(path.lstrip("/"))
    if not (mount / rel).is_dir():
        return [mount]
    folders = [mount / rel]
    folders += [mount / p for p in rel.parents]
    return folders


def cgroup_room(proc_root: str | Path = "/proc", sys_root: str | Path = "/sys") -> tuple[int, str] | None:
    """Bytes left under the tightest memory limit of this process's cgroups, and which one.

    Usage counts reclaimable page cache (``inactive_file``) as free. ``None``: no limit.
    """
    proc_root, cgroup = Path(proc_root), Path(sys_root) / "fs" / "cgroup"
    v2, v1 = _own_groups(proc_root)
    found: list[tuple[int, str]] = []
    if v1 is not None and (cgroup / "memory").is_dir():
        for folder in _chain(cgroup / "memory", v1):
            limit = _read_int(folder / "memory.limit_in_bytes")
            if limit is None or limit >= _NO_LIMIT:
                continue
            usage = _read_int(folder / "memory.usage_in_bytes") or 0
            usage -= _inactive_file(folder / "memory.stat", "total_inactive_file")
            found.append((max(0, limit - max(0, usage)), f"cgroup v1 limit {_gb(limit)} of {folder}"))
    if v2 is not None:
        root = cgroup if (cgroup / "cgroup.controllers").is_file() else cgroup / "unified"
        if root.is_dir():
            for folder in _chain(root, v2):
                limit = _read_int(folder / "memory.max")
                if limit is None:
                    continue
                usage = _read_int(folder / "memory.current") or 0
                usage -= _inactive_file(folder / "memory.stat", "inactive_file")
                found.append(
                    (max(0, limit - max(0, usage)), f"cgroup v2 memory.max {_gb(limit)} of {folder}")
                )
    return min(found) if found else None


def process_memory(proc_root: str | Path = "/proc", sys_root: str | Path = "/sys") -> tuple[int | None, str]:
    """Bytes this process can still allocate on the host, and where that number comes from."""
    options: list[tuple[int, str]] = []
    available = mem_available(proc_root)
    if available is not None:
        options.append((available, "host MemAvailable"))
    room = cgroup_room(proc_root, sys_root)
    if room is not None:
        options.append(room)
    if not options:
        return None, "unknown (no /proc/meminfo, no cgroup limit)"
    return min(options)


# --- what the search needs ----------------------------------------------------------------


@dataclass(frozen=True)
class MemoryNeeds:
    """Bytes the candidate model needs, per part.

    Attributes:
        rows: Resident rows per tensor (K checkpoints, plus the base for task-vector methods).
        live_bytes: The rewritten live tensors, in the live dtype.
        stack_bytes: The resident stacks (device and host tiers).
        resident_buffers: Working buffers of the resident tiers.
        stream_buffers: Working buffers of the disk tier (block buffers, TIES statistics).
        stream_read: Bytes the disk tier reads from the checkpoint files per trial.
        lora: Whether the inputs are LoRA adapters (stacks estimated as base once + factors).
        pipeline_bytes: The host tier's pinned chunk buffers (two per dtype sent to the GPU).
        live_itemsize: Bytes per element of the live model's dtype.
        factor_bytes: The LoRA adapters' factors in float32, which the disk tier keeps across
            trials when they fit (the resident tiers count them in ``stack_bytes``).
        factor_read: Bytes of the adapter files, part of ``stream_read`` (not re-read per
            trial when the disk tier keeps the factors).
        sum_bytes: Bytes of bfloat16/float16 rows a linear candidate's weighted sums read per
            trial (tensors of two rows or more), which decide whether the sum is compiled
            (see :mod:`~hf_recycle._merge.fused`).
    """

    rows: int
    live_bytes: int
    stack_bytes: int
    resident_buffers: int
    stream_buffers: int
    stream_read: int
    lora: bool
    pipeline_bytes: int = 0
    live_itemsize: int = 4
    factor_bytes: int = 0
    factor_read: int = 0
    sum_bytes: int = 0


def _numel(shape: Sequence[int]) -> int:
    return math.prod(int(d) for d in shape)


def _store_dtype(rows: Sequence[TensorSource], key: str) -> torch.dtype:
    """A stack's dtype, as the resident model stores it: the rows' common float dtype, else float32."""
    import torch

    dtypes = {src.dtype(key) for src in rows}
    only = dtypes.pop() if len(dtypes) == 1 else None
    return only if only is not None and only.is_floating_point else torch.float32


def _adapter_file_bytes(source: TensorSource) -> int:
    files = [f for f in Path(source.path).glob("adapter_model*") if f.suffix in (".safetensors", ".bin")]
    return sum(f.stat().st_size for f in files)


def _adapter_bytes(source: TensorSource) -> int:
    """Float32 bytes of an adapter's factors, from the sizes of its weight files."""
    size = _adapter_file_bytes(source)
    modules = getattr(source, "modules", {})
    stored = 4
    if modules:  # scale the stored factors to float32
        try:
            first = next(iter(modules.values()))
            stored = source.adapter_dtype(first.a_key).itemsize  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - the file size is the estimate then
            stored = 4
    return size * 4 // max(stored, 1)


def estimate_needs(
    sources: Sequence[TensorSource],
    base: TensorSource | None,
    *,
    method: str,
    dtype: str = "auto",
    density: float | None = None,
    device_type: str = "cpu",
    sums_to_one: bool = True,
) -> MemoryNeeds:
    """Bytes the candidate model of ``sources`` needs, read from the headers only.

    Mirrors :class:`~hf_recycle._search.resident.ResidentModel`: the live model in ``dtype``
    (``auto``: the first tensor's stored dtype), one stack per floating tensor in the
    common stored dtype of its rows (float32 when they differ); for a pool of LoRA adapters
    the base's copy of the tensors they change, and their factors. ``sums_to_one``: the
    candidate's coefficients sum to 1 (all but an unnormalized linear merge), so a tensor
    no input changes is the base's and neither kept nor re-read.
    """
    import torch

    from hf_recycle._merge.lora import LoraSource
    from hf_recycle._merge.methods import get_method, resolve_params
    from hf_recycle._merge.streaming import (
        CPU_BLOCK_ELEMENTS,
        CUDA_BLOCK_ELEMENTS,
        LOW_RANK_MAX_BLOCK_ELEMENTS,
        default_workers,
    )
    from hf_recycle._search.host_tier import HOST_CHUNK_ELEMENTS
    from hf_recycle._search.lora_candidate import varying_keys

    ref = sources[0]
    keys = [k for k in ref.keys() if ref.dtype(k).is_floating_point]
    if dtype == "auto":
        first = ref.dtype(ref.keys()[0])
        live_dtype = first if first.is_floating_point else torch.float32
    else:
        live_dtype = getattr(torch, dtype)
    merge_method = get_method(method)
    rows = [*sources, *([base] if base is not None and merge_method.needs_base else [])]
    numels = {k: _numel(ref.shape(k)) for k in keys}
    max_numel = max(numels.values(), default=0)
    live = sum(n * live_dtype.itemsize for n in numels.values())
    lora = any(isinstance(s, LoraSource) for s in sources)
    if lora:  # factors form: the base once (only the tensors an adapter changes), plus the factors
        shared = next(s.base for s in sources if isinstance(s, LoraSource))
        varying = varying_keys(sources, keys, sums_to_one)  # the others stay the base's: written once
        base_once = sum(numels[k] * shared.dtype(k).itemsize for k in keys if k in varying)
        stacks = base_once + sum(_adapter_bytes(s) for s in sources if isinstance(s, LoraSource))
        stacks += sum(
            numels[k] * s.dtype(k).itemsize for s in sources if not isinstance(s, LoraSource) for k in keys
        )
    else:
        stacks = sum(len(rows) * numels[k] * _store_dtype(rows, k).itemsize for k in keys)
    low = (torch.bfloat16, torch.float16)
    summed = [s for s in rows if not isinstance(s, LoraSource)]  # an adapter's base is one row
    sum_bytes = 0
    if merge_method.linear_in_delta and len(summed) > 1:
        sum_bytes = sum(s.nbytes(k) for s in summed for k in keys if s.dtype(k) in low)
    resident_buffers = max_numel * 4 * (1 if merge_method.linear_in_delta else len(rows) + 2)
    # disk tier: each engine worker holds its inputs' blocks, their float32 merge and the cast output
    device = torch.device(device_type)
    block = CUDA_BLOCK_ELEMENTS if device.type == "cuda" else CPU_BLOCK_ELEMENTS
    row_numel = max((numels[k] // max(1, ref.shape(k)[0]) if ref.shape(k) else 1 for k in keys), default=1)
    block = min(max(block, row_numel), max_numel) if max_numel else 0
    stream_buffers = default_workers(device) * (len(rows) + 3) * block * 4
    params = resolve_params(merge_method, density=density if merge_method.uses_density else None)
    needs_stats = merge_method.needs_stats(params)
    if needs_stats:  # the whole-tensor |τ| and its threshold pass
        stream_buffers += max_numel * 4
    if lora:  # per worker, a tensor with LoRA deltas comes in taller blocks: float32 sum, input, cast output
        stream_buffers += default_workers(device) * min(max_numel, LOW_RANK_MAX_BLOCK_ELEMENTS) * 3 * 4
    read = sum(s.nbytes(k) for s in rows if not isinstance(s, LoraSource) for k in keys)
    factor_bytes = factor_read = 0
    if lora:
        adapters = [s for s in sources if isinstance(s, LoraSource)]
        factor_bytes = sum(_adapter_bytes(s) for s in adapters)
        factor_read = sum(_adapter_file_bytes(s) for s in adapters)
        read += base_once + factor_read
    if needs_stats:
        read *= 2
    chunk = min(HOST_CHUNK_ELEMENTS, max_numel)
    pipeline = 2 * chunk * live_dtype.itemsize  # float32 sums are sent as is, others cast first
    return MemoryNeeds(
        len(rows),
        live,
        stacks,
        resident_buffers,
        stream_buffers,
        read,
        lora,
        pipeline,
        live_dtype.itemsize,
        factor_bytes,
        factor_read if merge_method.weighted_sum else 0,
        sum_bytes,
    )


# --- the plan -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryPlan:
    """Where the search's candidate model keeps what, and why.

    Attributes:
        tier: ``device``, ``host`` or ``disk``.
        live_device: Where the live model runs (``cpu`` or ``cuda[:N]``).
        needs: The estimated bytes, per part.
        host_available: Bytes the process can still allocate on the host (``None``: unknown).
        host_source: Where ``host_available`` comes from (MemAvailable, a cgroup, the recipe).
        gpu_free: Free bytes of the live model's GPU (``None`` on the CPU).
        requested: The recipe's ``search.resident`` (``auto`` or a forced tier).
        fits: Whether the chosen tier fits (a forced tier may not).
        bytes_per_trial: Bytes each trial reads: from the stacks (device, host), from the
            checkpoint files (disk).
        keep_factors: The disk tier keeps the LoRA adapters' factors across trials (they fit
            next to it), so a trial reads only the base's tensors and the full checkpoints.
        compiled_sum: The candidates' weighted sums run in the native kernel (compiled C, CPU
            only): they read enough low-precision rows per trial for compiling to pay (see
            :mod:`~hf_recycle._merge.fused`), or ``HF_RECYCLE_COMPILE`` says so.
    """

    tier: str
    live_device: str
    needs: MemoryNeeds
    host_available: int | None
    host_source: str
    gpu_free: int | None
    requested: str
    fits: bool
    bytes_per_trial: int
    keep_factors: bool = False
    compiled_sum: bool = False

    @property
    def resident_device(self) -> str | None:
        """Where :class:`ResidentModel` keeps the stacks (``None`` for the disk tier)."""
        if self.tier == "disk":
            return None
        return self.live_device if self.tier == "device" else "cpu"

    def describe(self) -> str:
        """The plan as text, one fact per line."""
        n = self.needs
        cpu = not self.live_device.startswith("cuda")
        tier = self.tier + (
            " (= host: the live model is on the CPU)" if cpu and self.tier == "device" else ""
        )
        how = "forced by search.resident" if self.requested != "auto" else "the fastest tier that fits"
        stacks = "base once + adapter factors" if n.lora else f"{n.rows} rows per tensor"
        lines = [
            f"memory plan: tier {tier}, {how}{'' if self.fits else ' (it does NOT fit: expect to be killed)'}",
            f"  live model on {self.live_device}: {_gb(n.live_bytes)}",
            f"  stacks ({stacks}): {_gb(n.stack_bytes)}, resident buffers {_gb(n.resident_buffers)}",
            f"  disk tier buffers: {_gb(n.stream_buffers)}"
            + (f", adapter factors kept across trials: {_gb(n.factor_bytes)}" if self.keep_factors else ""),
            f"  host memory available: {_gb(self.host_available)} ({self.host_source}); "
            f"a plan uses at most {HEADROOM:.0%} of it",
        ]
        if self.gpu_free is not None:
            lines.append(f"  GPU free: {_gb(self.gpu_free)}")
        source = "the checkpoint files (page cache)" if self.tier == "disk" else "the resident stacks"
        lines.append(f"  each trial reads {_gb(self.bytes_per_trial)} from {source}")
        if n.sum_bytes and _sums_on_cpu(self.tier, not cpu):
            from hf_recycle._merge.fused import COMPILE_ENV, COMPILE_MIN_BYTES

            how = "native (compiled C)" if self.compiled_sum else "eager"
            lines.append(
                f"  weighted sums: {how}, over {_gb(n.sum_bytes)} of bfloat16/float16 rows per trial "
                f"({COMPILE_ENV}: auto compiles from {_gb(COMPILE_MIN_BYTES)}, 1 always, 0 never)"
            )
        lines.append("  each search worker on this host builds its own copy: divide the memory among them")
        return "\n".join(lines)


def _sums_on_cpu(tier: str, on_gpu: bool) -> bool:
    """Whether a candidate's weighted sums run on the CPU in ``tier``: every tier of a CPU run
    (the ``disk`` tier's in the merge engine's workers), the ``host`` tier's chunks on a GPU."""
    return not on_gpu or tier == "host"


def _tier_costs(needs: MemoryNeeds, on_gpu: bool) -> dict[str, tuple[int, int]]:
    """Per tier: (host bytes, GPU bytes)."""
    live, stacks = needs.live_bytes, needs.stack_bytes
    if not on_gpu:
        resident = live + stacks + needs.resident_buffers
        return {"device": (resident, 0), "host": (resident, 0), "disk": (live + needs.stream_buffers, 0)}
    return {
        "device": (0, live + stacks + needs.resident_buffers),
        # the candidate is computed on the host and copied chunk by chunk into the live model
        "host": (stacks + needs.resident_buffers + needs.pipeline_bytes, live),
        "disk": (needs.stream_buffers, live + needs.stream_buffers),
    }


def plan_memory(
    sources: Sequence[TensorSource],
    base: TensorSource | None,
    *,
    method: str,
    dtype: str = "auto",
    density: float | None = None,
    device: str = "cpu",
    resident: str = "auto",
    memory_limit: str | int = "auto",
    sums_to_one: bool = True,
    proc_root: str | Path = "/proc",
    sys_root: str | Path = "/sys",
    gpu_free: int | None = None,
) -> MemoryPlan:
    """Choose the fastest tier whose bytes fit, before anything is allocated.

    Args:
        sources: The opened checkpoints.
        base: The opened base (task-vector methods, LoRA inputs).
        method: The merge method.
        dtype: The live model's dtype (``merge.dtype``).
        density: The merge density (TIES statistics).
        device: Where the live model runs (``cpu``, ``cuda``, ``cuda:N``; already resolved).
        resident: ``auto`` or a tier to use whatever the numbers say.
        memory_limit: ``auto`` (MemAvailable and cgroup limits) or a size the host memory is capped at.
        sums_to_one: The candidates' coefficients sum to 1 (see :func:`estimate_needs`).
        proc_root, sys_root: Where ``/proc`` and ``/sys`` are (tests).
        gpu_free: Free GPU bytes (default: ``torch.cuda.mem_get_info`` when ``device`` is CUDA).

    Raises:
        SearchMemoryError: No tier fits, not even the live model with the smallest tier's buffers.
        MergeConfigError: ``resident`` is not a tier, or ``HF_RECYCLE_COMPILE`` is not a setting.
    """
    from hf_recycle._merge.fused import compile_setting
    from hf_recycle._merge.fused import wanted as fused_wanted
    from hf_recycle.units import parse_size

    compile_setting()  # a bad HF_RECYCLE_COMPILE is an error before anything else
    if resident != "auto" and resident not in TIERS:
        raise MergeConfigError(f"search.resident must be auto, device, host or disk, got '{resident}'")
    on_gpu = device.startswith("cuda")
    needs = estimate_needs(
        sources,
        base,
        method=method,
        dtype=dtype,
        density=density,
        device_type="cuda" if on_gpu else "cpu",
        sums_to_one=sums_to_one,
    )
    if memory_limit == "auto":
        host, host_source = process_memory(proc_root, sys_root)
    else:
        host, host_source = parse_size(memory_limit, "search.memory_limit"), "search.memory_limit"
    if on_gpu and gpu_free is None:
        import torch

        gpu_free, _ = torch.cuda.mem_get_info(torch.device(device))
    costs = _tier_costs(needs, on_gpu)

    def fits(tier: str, extra: int = 0) -> bool:
        host_bytes, gpu_bytes = costs[tier]
        host_bytes, gpu_bytes = (host_bytes, gpu_bytes + extra) if on_gpu else (host_bytes + extra, gpu_bytes)
        return (host is None or host_bytes <= HEADROOM * host) and (
            gpu_free is None or gpu_bytes <= HEADROOM * gpu_free
        )

    fitting = [t for t in TIERS if fits(t)]
    if not fitting:  # not even the live model with the smallest tier's buffers
        smallest = min(TIERS, key=lambda t: sum(costs[t]))
        raise SearchMemoryError(
            _too_big(needs, smallest, costs[smallest], host, host_source, gpu_free, on_gpu)
        )
    if resident == "auto":
        tier = fitting[0]
    else:
        tier = "device" if resident == "host" and not on_gpu else resident
    # the disk tier keeps the adapters' factors (read and converted once) when they fit beside it
    keep_factors = tier == "disk" and needs.factor_read > 0 and fits(tier, needs.factor_bytes)
    per_trial = needs.stack_bytes
    if tier == "disk":
        per_trial = needs.stream_read - (needs.factor_read if keep_factors else 0)
    compiled_sum = _sums_on_cpu(tier, on_gpu) and needs.sum_bytes > 0 and fused_wanted(needs.sum_bytes)
    plan = MemoryPlan(
        tier,
        device,
        needs,
        host,
        host_source,
        gpu_free,
        resident,
        fits(tier),
        per_trial,
        keep_factors,
        compiled_sum,
    )
    if not plan.fits:
        logger.warning(
            "search.resident '%s' does not fit the memory the process has:\n%s", tier, plan.describe()
        )
    return plan


def plan_recipe_memory(
    recipe: Any, checkpoints: Sequence[TensorSource], base: TensorSource | None, device: str, **roots: Any
) -> MemoryPlan:
    """:func:`plan_memory` with a recipe's merge and search settings (``roots``: tests)."""
    from hf_recycle._merge.methods import get_method

    merge, spec = recipe.merge, recipe.search
    density = merge.density
    if spec.search_density and get_method(merge.method).uses_density:
        density = min(density or 0.5, 0.5)  # trials try densities below 1: count the TIES statistics
    from hf_recycle._search.live import coefficients_sum_to_one, default_normalize

    normalize = default_normalize(merge.method, spec.weights) if merge.normalize is None else merge.normalize
    return plan_memory(
        checkpoints,
        base,
        method=merge.method,
        dtype=merge.dtype,
        density=density,
        device=device,
        resident=spec.resident,
        memory_limit=spec.memory_limit,
        sums_to_one=coefficients_sum_to_one(merge.method, normalize),
        **roots,
    )


def _too_big(
    needs: MemoryNeeds,
    tier: str,
    cost: tuple[int, int],
    host: int | None,
    host_source: str,
    gpu_free: int | None,
    on_gpu: bool,
) -> str:
    host_bytes, gpu_bytes = cost
    buffers = needs.stream_buffers if tier == "disk" else needs.resident_buffers
    stacks = f", stacks {_gb(needs.stack_bytes)}" if tier != "disk" else ""
    where = (
        f"{_gb(gpu_bytes)} of GPU memory ({_gb(gpu_free)} free)"
        if on_gpu and gpu_free is not None and gpu_bytes > HEADROOM * gpu_free
        else f"{_gb(host_bytes)} of host memory ({_gb(host)} available: {host_source})"
    )
    gpu_bound = on_gpu and gpu_free is not None and gpu_bytes > HEADROOM * gpu_free
    todo = []
    if needs.live_itemsize > 2:
        todo.append("a smaller live dtype (merge.dtype: bfloat16)")
    if gpu_bound:
        todo.append("the live model on the CPU (merge.device: cpu, or --device cpu)")
    todo += [
        "fewer or smaller checkpoints",
        "more memory",
        "search.memory_limit if the detected limit is wrong",
    ]
    return (
        f"the search's live model does not fit: even its smallest memory tier ({tier}) needs "
        f"{where}, with {HEADROOM:.0%} of it usable (live model {_gb(needs.live_bytes)}{stacks}, buffers "
        f"{_gb(buffers)}); nothing was loaded. Use " + ", ".join(todo[:-1]) + f", or set {todo[-1]}"
    )
