"""The merge-method contract: parameters, per-tensor statistics, scratch buffers, and the ABC."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from hf_recycle.errors import MergeConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch


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
        import torch

        self.device = torch.device(device)
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: Sequence[int], dtype: torch.dtype | None = None) -> torch.Tensor:
        """A buffer of ``shape`` (default dtype float32, contents undefined) backed by the storage ``name``."""
        import torch

        dtype = torch.float32 if dtype is None else dtype
        numel = 1
        for dim in shape:
            numel *= dim
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            buf = torch.empty(max(numel, 1), dtype=dtype, device=self.device)
            self._buffers[name] = buf
        return buf[:numel].view(tuple(shape))


def as_float32(x: torch.Tensor, ws: Workspace, name: str) -> torch.Tensor:
    """``x`` as float32 in buffer ``name`` (a copy, safe to modify)."""
    return ws.get(name, x.shape).copy_(x)


def row_offset(chunk: torch.Tensor, rows: slice | None) -> int:
    """Flat index of the first element of ``chunk`` in the whole tensor."""
    if rows is None or chunk.dim() == 0 or not rows.start:
        return 0
    row_numel = chunk[0].numel() if chunk.shape[0] else 0
    return rows.start * row_numel


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
        linear_in_delta: Whether the result is base + Σ cᵢ·ΔWᵢ with coefficients that depend on
            the weights only (no entry of a ΔW trimmed or dropped): the search's candidate is
            then one weighted sum per tensor, and a LoRA output can hold it.
        order: Where the method is listed (``--method`` choices, errors).
    """

    name: ClassVar[str]
    pretty_name: ClassVar[str]
    reference_url: ClassVar[str]
    needs_base: ClassVar[bool] = True
    default_normalize: ClassVar[bool] = False
    uses_density: ClassVar[bool] = False
    weighted_sum: ClassVar[bool] = False
    linear_in_delta: ClassVar[bool] = False
    order: ClassVar[int] = 100

    def linear_coefficients(
        self, weights: Sequence[float], params: MethodParams
    ) -> tuple[list[float], float]:
        """``(a, b)`` with merged = Σ aᵢ·θᵢ + b·θ_base, for a method that is :attr:`linear_in_delta`.

        Raises:
            MergeConfigError: The method trims or drops entries of its task vectors.
        """
        raise MergeConfigError(f"merge method '{self.name}' is not a weighted sum of its inputs")

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


def prepare(tensors: Sequence[torch.Tensor], out: torch.Tensor | None, workspace: Workspace | None):
    import torch

    if not tensors:
        raise MergeConfigError("a merge needs at least one checkpoint")
    ws = workspace or Workspace(tensors[0].device)
    if out is None:
        out = torch.empty(tensors[0].shape, dtype=torch.float32, device=tensors[0].device)
    return ws, out
