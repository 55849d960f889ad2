"""Merge methods: pure float32 arithmetic on tensors or blocks of rows, no I/O.

Each method is a small object in :data:`METHODS` with a ``pretty_name``, a paper
``reference_url``, whether it ``needs_base``, its ``default_normalize``, and
:meth:`MergeMethod.combine`, which merges the same tensor (or the same block of rows
of it) from every checkpoint. The streaming engine calls ``combine`` on row blocks
read from disk; the resident search model calls it on whole tensors held in memory.

The semantics are mergekit's for the same names and parameters (per tensor, float32):

- ``linear``: θ = Σ wᵢθᵢ, divided by Σ wᵢ when normalize (default on).
- ``task_arithmetic``: θ = θ_base + λ·Σ wᵢτᵢ with τᵢ = θᵢ − θ_base (normalize default
  off; when on the sum is divided by Σ wᵢ, or by 1 if |Σ wᵢ| < 1e-8).
- ``ties``: each τᵢ keeps its k = max(1, ⌊density·numel⌋) largest-magnitude entries
  (density ≥ 1 keeps all; the threshold is taken over the whole tensor, ties at the
  threshold broken by flat position); dᵢ = wᵢτᵢ; elected sign s = +1 where Σ dᵢ ≥ 0
  else −1; mᵢ = [sign(dᵢ) = s]; mixed = Σ mᵢdᵢ, divided by Σ mᵢwᵢ (zeros → 1) when
  normalize (default on); θ = θ_base + λ·mixed.
- ``dare_linear`` / ``dare_ties``: as task_arithmetic / ties (normalize default off,
  as in mergekit), but each τᵢ keeps each entry with probability ``density`` and the
  survivors are divided by ``density``. The mask depends only on (seed, tensor name,
  input index): it is drawn on the CPU in fixed blocks of the flattened tensor, so it
  is the same whatever the chunking or device.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from hf_recycle.errors import MergeConfigError

#: Elements per block of the DARE mask stream (fixed: changing it changes every mask).
DARE_BLOCK = 1 << 20


@dataclass(frozen=True)
class MethodParams:
    """Parameters shared by every tensor of a merge (weights are passed separately).

    Attributes:
        density: Fraction of task-vector entries kept by ties/dare (0 < density ≤ 1).
        lambda_: Scale of the merged task vector (task-vector methods).
        normalize: Divide by the (effective) sum of weights.
        seed: Seed of the DARE masks.
    """

    density: float = 1.0
    lambda_: float = 1.0
    normalize: bool = True
    seed: int = 0


@dataclass(frozen=True)
class KeepThreshold:
    """Which entries of one task vector TIES keeps: |τ| > value, or |τ| == value at flat index ≤ last_tie."""

    value: float
    last_tie: int


@dataclass(frozen=True)
class TensorStats:
    """Whole-tensor statistics a method needs before combining blocks of rows.

    Attributes:
        thresholds: Per input, the TIES keep threshold (``None``: keep everything).
    """

    thresholds: tuple[KeepThreshold | None, ...]


class Workspace:
    """Named float32 buffers reused across calls (grown when a larger block comes)."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A buffer of ``shape`` (contents undefined) backed by the storage called ``name``."""
        numel = 1
        for dim in shape:
            numel *= dim
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            buf = torch.empty(max(numel, 1), dtype=dtype, device=self.device)
            self._buffers[name] = buf
        return buf[:numel].view(tuple(shape))


def _f32(x: torch.Tensor, ws: Workspace, name: str) -> torch.Tensor:
    """``x`` as float32 in buffer ``name`` (a copy, safe to modify)."""
    return ws.get(name, x.shape).copy_(x)


def _row_offset(chunk: torch.Tensor, rows: slice | None) -> int:
    """Flat index of the first element of ``chunk`` in the whole tensor."""
    if rows is None or chunk.dim() == 0 or not rows.start:
        return 0
    row_numel = chunk[0].numel() if chunk.shape[0] else 0
    return rows.start * row_numel


def stable_seed(seed: int, key: str, index: int, block: int) -> int:
    """A 63-bit seed from (seed, tensor name, input index, block), stable across runs and platforms."""
    digest = hashlib.blake2b(f"{seed}\0{key}\0{index}\0{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def dare_keep_mask(
    seed: int, key: str, index: int, numel: int, start: int, count: int, density: float
) -> torch.Tensor:
    """Flat boolean DARE mask of elements ``[start, start + count)`` of a tensor of ``numel`` elements.

    Drawn on the CPU, block by block, so any slicing of the tensor sees the same mask.
    """
    parts = []
    pos = start
    end = start + count
    while pos < end:
        block = pos // DARE_BLOCK
        block_start = block * DARE_BLOCK
        block_len = min(DARE_BLOCK, numel - block_start)
        gen = torch.Generator().manual_seed(stable_seed(seed, key, index, block))
        draws = torch.rand(block_len, generator=gen)
        stop = min(end, block_start + block_len)
        parts.append(draws[pos - block_start : stop - block_start] < density)
        pos = stop
    return torch.cat(parts) if len(parts) != 1 else parts[0]


def magnitude_threshold(abs_delta: torch.Tensor, density: float) -> KeepThreshold | None:
    """The TIES keep rule for one whole task vector given its absolute values.

    Keeps exactly k = max(1, ⌊density·numel⌋) entries: all above the k-th largest value,
    and as many of those equal to it as needed, first in flat order.
    """
    flat = abs_delta.reshape(-1)
    numel = flat.numel()
    if density >= 1 or numel == 0:
        return None
    k = max(1, int(density * numel))
    if k >= numel:
        return None
    value = torch.kthvalue(flat.float().cpu() if flat.device.type != "cpu" else flat, numel - k + 1).values
    value_f = float(value)
    need = k - int((flat > value_f).sum())
    step = 1 << 22
    seen = 0
    for begin in range(0, numel, step):
        block = flat[begin : begin + step] == value_f
        count = int(block.sum())
        if seen + count >= need:
            idx = torch.nonzero(block).reshape(-1)[need - seen - 1]
            return KeepThreshold(value_f, begin + int(idx))
        seen += count
    raise AssertionError("k-th value not found")  # pragma: no cover


def _apply_threshold(delta: torch.Tensor, thr: KeepThreshold | None, offset: int) -> None:
    """Zero, in place, the entries of a (block of a) task vector that TIES drops."""
    if thr is None:
        return
    flat = delta.reshape(-1)
    mag = flat.abs()
    n = flat.numel()
    cut = thr.last_tie - offset + 1  # entries [0, cut) may keep ties
    if cut <= 0:
        keep = mag > thr.value
    elif cut >= n:
        keep = mag >= thr.value
    else:
        keep = torch.empty(n, dtype=torch.bool, device=flat.device)
        torch.ge(mag[:cut], thr.value, out=keep[:cut])
        torch.gt(mag[cut:], thr.value, out=keep[cut:])
    flat.mul_(keep)


class MergeMethod(ABC):
    """A merge method: metadata plus a pure ``combine``.

    Attributes:
        name: Registry name (``--method``).
        pretty_name: Human-readable name for logs and model cards.
        reference_url: The paper that defines it.
        needs_base: Whether a base checkpoint is required (task-vector methods).
        default_normalize: ``normalize`` when the user does not say.
        uses_density: Whether ``density`` means something for this method.
        weighted_sum: Whether :meth:`combine` is Σ wᵢxᵢ (divided by Σ wᵢ when normalize), so
            that inputs holding the same tensor may be passed once with the sum of their
            weights, and low-rank deltas added afterwards.
    """

    name: ClassVar[str]
    pretty_name: ClassVar[str]
    reference_url: ClassVar[str]
    needs_base: ClassVar[bool] = True
    default_normalize: ClassVar[bool] = False
    uses_density: ClassVar[bool] = False
    weighted_sum: ClassVar[bool] = False

    def needs_stats(self, params: MethodParams) -> bool:
        """Whether :meth:`tensor_stats` must run over whole tensors before row blocks are combined."""
        return False

    def tensor_stats(self, abs_deltas: Sequence[torch.Tensor], params: MethodParams) -> TensorStats:
        """Whole-tensor statistics from the absolute task vectors |τᵢ| of one tensor."""
        return TensorStats(tuple(None for _ in abs_deltas))

    @abstractmethod
    def combine(
        self,
        tensors: Sequence[torch.Tensor],
        weights: Sequence[float],
        base: torch.Tensor | None,
        params: MethodParams,
        key: str,
        *,
        rows: slice | None = None,
        numel: int | None = None,
        stats: TensorStats | None = None,
        out: torch.Tensor | None = None,
        workspace: Workspace | None = None,
    ) -> torch.Tensor:
        """Merge one tensor, or the block of rows ``rows`` of it, from every checkpoint.

        Args:
            tensors: The tensor (or the same rows of it) from each checkpoint, any float
                dtype, all on the same device. Not modified.
            weights: One weight per checkpoint.
            base: The same tensor/rows of the base checkpoint (task-vector methods).
            params: Density, lambda, normalize and seed.
            key: The tensor name (seeds the DARE mask).
            rows: Which rows of the first dimension the inputs hold (``None``: all).
            numel: Element count of the whole tensor (required by DARE when ``rows`` is given).
            stats: From :meth:`tensor_stats` (required by TIES with density < 1 when
                ``rows`` is given; computed here from the inputs otherwise).
            out: Float32 tensor of the inputs' shape to write into.
            workspace: Reused scratch buffers (a fresh one when ``None``).

        Returns:
            The merged float32 tensor (``out`` when given).
        """

    def __repr__(self) -> str:
        return f"<merge method {self.name}>"


def _prepare(tensors: Sequence[torch.Tensor], out: torch.Tensor | None, workspace: Workspace | None):
    if not tensors:
        raise MergeConfigError("a merge needs at least one checkpoint")
    ws = workspace or Workspace(tensors[0].device)
    if out is None:
        out = torch.empty(tensors[0].shape, dtype=torch.float32, device=tensors[0].device)
    return ws, out


class Linear(MergeMethod):
    """Weighted average of the checkpoints (model soups)."""

    name = "linear"
    pretty_name = "Linear"
    reference_url = "https://arxiv.org/abs/2203.05482"
    needs_base = False
    default_normalize = True
    weighted_sum = True

    def combine(
        self,
        tensors,
        weights,
        base,
        params,
        key,
        *,
        rows=None,
        numel=None,
        stats=None,
        out=None,
        workspace=None,
    ):
        ws, out = _prepare(tensors, out, workspace)
        out.copy_(tensors[0])
        if float(weights[0]) != 1.0:  # x·1 and x/1 are exact: skip those passes
            out.mul_(float(weights[0]))
        for tensor, weight in zip(tensors[1:], weights[1:], strict=True):
            out.add_(tensor, alpha=float(weight))  # promotes to float32 inside the kernel
        total = float(sum(weights))
        if params.normalize and total != 1.0:
            out.div_(total)
        return out


class _TaskVectorMethod(MergeMethod):
    """Shared body of task_arithmetic, ties and the DARE variants."""

    consensus: ClassVar[bool] = False
    sparsify: ClassVar[str | None] = None  # None | "magnitude" | "random"

    def needs_stats(self, params: MethodParams) -> bool:
        return self.sparsify == "magnitude" and params.density < 1

    def tensor_stats(self, abs_deltas, params):
        if not self.needs_stats(params):
            return TensorStats(tuple(None for _ in abs_deltas))
        return TensorStats(tuple(magnitude_threshold(a, params.density) for a in abs_deltas))

    def combine(
        self,
        tensors,
        weights,
        base,
        params,
        key,
        *,
        rows=None,
        numel=None,
        stats=None,
        out=None,
        workspace=None,
    ):
        if base is None:
            raise MergeConfigError(f"merge method '{self.name}' needs a base checkpoint (--base)")
        ws, out = _prepare(tensors, out, workspace)
        shape = tensors[0].shape
        offset = _row_offset(tensors[0], rows)
        if numel is None:
            if rows is not None and self.sparsify == "random":
                raise ValueError(
                    "dare methods need numel (the whole tensor's size) when combining row blocks"
                )
            numel = tensors[0].numel()
        base32 = _f32(base, ws, "base")
        deltas: list[torch.Tensor] = []
        if self.needs_stats(params) and stats is None:
            if rows is not None:
                raise ValueError("ties with density < 1 needs whole-tensor stats when combining row blocks")
            abs_all = [(t.float() - base32).abs_() for t in tensors]
            stats = self.tensor_stats(abs_all, params)
            del abs_all
        for i, (tensor, weight) in enumerate(zip(tensors, weights, strict=True)):
            delta = ws.get(f"delta{i}" if self.consensus else "delta", shape).copy_(tensor).sub_(base32)
            if self.sparsify == "magnitude" and stats is not None:
                _apply_threshold(delta, stats.thresholds[i], offset)
            elif self.sparsify == "random" and params.density < 1:
                mask = dare_keep_mask(params.seed, key, i, numel, offset, delta.numel(), params.density)
                delta.mul_(mask.to(delta.device).view(shape)).div_(params.density)
            if self.consensus:
                deltas.append(delta.mul_(float(weight)))
            elif i == 0:
                out.copy_(delta).mul_(float(weight))
            else:
                out.add_(delta, alpha=float(weight))
        if self.consensus:
            self._consensus(deltas, weights, params, out, ws)
        elif params.normalize:
            total = float(sum(weights))
            if abs(total) >= 1e-8:
                out.div_(total)
        if params.lambda_ != 1:
            out.mul_(float(params.lambda_))
        return out.add_(base32)

    @staticmethod
    def _consensus(deltas, weights, params, out, ws) -> None:
        """TIES sign election on weighted deltas dᵢ; writes the (normalized) mixed delta into ``out``."""
        shape = deltas[0].shape
        elected = ws.get("elected", shape).copy_(deltas[0])
        for d in deltas[1:]:
            elected.add_(d)
        elected.ge_(0).mul_(2).sub_(1)  # Σ dᵢ ≥ 0 -> +1, else -1
        divisor = ws.get("divisor", shape).zero_()
        out.zero_()
        sign = ws.get("sign", shape)
        for d, weight in zip(deltas, weights, strict=True):
            torch.sign(d, out=sign)
            match = sign.eq_(elected)  # 1.0 where the sign agrees, else 0.0
            out.addcmul_(d, match)
            divisor.add_(match, alpha=float(weight))
        if params.normalize:
            divisor.masked_fill_(divisor == 0, 1.0)
            out.div_(divisor)


class TaskArithmetic(_TaskVectorMethod):
    """θ_base + λ·Σ wᵢτᵢ (editing models with task vectors)."""

    name = "task_arithmetic"
    pretty_name = "Task Arithmetic"
    reference_url = "https://arxiv.org/abs/2212.04089"


class Ties(_TaskVectorMethod):
    """TIES-merging: trim small task-vector entries, elect signs, merge agreeing entries."""

    name = "ties"
    pretty_name = "TIES"
    reference_url = "https://arxiv.org/abs/2306.01708"
    default_normalize = True
    uses_density = True
    consensus = True
    sparsify = "magnitude"


class DareLinear(_TaskVectorMethod):
    """DARE: drop task-vector entries at random, rescale survivors, add (task arithmetic)."""

    name = "dare_linear"
    pretty_name = "Linear DARE"
    reference_url = "https://arxiv.org/abs/2311.03099"
    uses_density = True
    sparsify = "random"


class DareTies(_TaskVectorMethod):
    """DARE sparsification followed by TIES sign election."""

    name = "dare_ties"
    pretty_name = "DARE TIES"
    reference_url = "https://arxiv.org/abs/2311.03099"
    uses_density = True
    consensus = True
    sparsify = "random"


#: Registry: ``--method`` name -> method object.
METHODS: dict[str, MergeMethod] = {
    m.name: m for m in (Linear(), TaskArithmetic(), Ties(), DareLinear(), DareTies())
}


def get_method(name: str) -> MergeMethod:
    """The method registered as ``name``.

    Raises:
        MergeConfigError: No such method.
    """
    try:
        return METHODS[name]
    except KeyError:
        raise MergeConfigError(f"unknown merge method '{name}': use one of {', '.join(METHODS)}") from None


def check_weights(weights: Sequence[float], count: int, method: MergeMethod, normalize: bool) -> list[float]:
    """Validate one weight per checkpoint.

    Raises:
        MergeConfigError: Wrong count, a non-finite weight, or weights that sum to 0
            under a normalized linear merge.
    """
    import math

    weights = [float(w) for w in weights]
    if len(weights) != count:
        raise MergeConfigError(
            f"got {len(weights)} weight{'s' if len(weights) != 1 else ''} for {count} checkpoint"
            f"{'s' if count != 1 else ''}: pass exactly one weight per checkpoint, in the same order "
            "(or none for uniform weights)"
        )
    if not all(math.isfinite(w) for w in weights):
        raise MergeConfigError(f"weights must be finite numbers, got {weights}")
    if method.name == "linear" and normalize and abs(sum(weights)) < 1e-12:
        raise MergeConfigError(
            f"the weights {weights} sum to 0, so a normalized linear merge is undefined: "
            "change the weights or pass --no-normalize"
        )
    return weights


@dataclass(frozen=True)
class GroupWeights:
    """Weights that depend on the tensor: one row of weights (one per checkpoint) per group of tensors.

    A ``granularity: layers:N`` search finds one row per group (embeddings, each block of
    N layers, head); pass this as ``weights`` to :func:`hf_recycle.merge.engine.merge`.

    Attributes:
        rows: Group name -> its weights, one per checkpoint, in model order.
        group_of: Tensor name -> group name, or a function that builds that mapping from
            the model's tensor names (called once, when the merge knows them).
    """

    rows: Mapping[str, Sequence[float]]
    group_of: Mapping[str, str] | Callable[[Sequence[str]], Mapping[str, str]]

    def assign(self, names: Sequence[str]) -> dict[str, str]:
        """Each tensor's group, for the model's tensor names.

        Raises:
            MergeConfigError: A tensor has no group, or a group has no row of weights.
        """
        group_of = dict(self.group_of(names) if callable(self.group_of) else self.group_of)
        missing = [n for n in names if n not in group_of]
        if missing:
            shown = ", ".join(f"'{n}'" for n in missing[:5]) + (
                f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            )
            raise MergeConfigError(f"tensor(s) {shown} belong to no weight group: give every tensor a group")
        unknown = sorted({g for g in group_of.values() if g not in self.rows})
        if unknown:
            raise MergeConfigError(
                f"weight group(s) {unknown} have no row of weights (groups with weights: {list(self.rows)})"
            )
        return {n: group_of[n] for n in names}

    def to_json(self) -> dict[str, list[float]]:
        """``{group: weights}`` for ``merge_config.json``."""
        return {g: [float(w) for w in row] for g, row in self.rows.items()}


def resolve_params(
    method: MergeMethod,
    *,
    density: float | None = None,
    lambda_: float = 1.0,
    normalize: bool | None = None,
    seed: int = 0,
) -> MethodParams:
    """Validate user parameters for ``method`` and fill in its defaults.

    Raises:
        MergeConfigError: density outside (0, 1], density given to a method that has
            none, or a non-finite lambda.
    """
    import math

    if density is not None:
        if not method.uses_density:
            users = ", ".join(m.name for m in METHODS.values() if m.uses_density)
            raise MergeConfigError(
                f"--density does not apply to method '{method.name}': it is used by {users}"
            )
        if not (isinstance(density, int | float) and 0 < density <= 1):
            raise MergeConfigError(
                f"density must be in (0, 1], got {density}: it is the fraction of entries kept"
            )
    if not math.isfinite(lambda_):
        raise MergeConfigError(f"lambda must be a finite number, got {lambda_}")
    return MethodParams(
        density=1.0 if density is None else float(density),
        lambda_=float(lambda_),
        normalize=method.default_normalize if normalize is None else bool(normalize),
        seed=int(seed),
    )
