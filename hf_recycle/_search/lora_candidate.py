"""What the resident model keeps of one tensor: dense copies where needed, LoRA factors elsewhere.

A row of the search (a checkpoint, or the base of a task-vector method) is either a
dense tensor or, for a LoRA adapter, a shared base tensor plus ``U @ V`` (see
:meth:`~hf_recycle._merge.sources.TensorSource.low_rank_form`). A :class:`TensorPlan`
keeps each distinct dense tensor once (every adapter over one base shares that base's
copy, and the task-vector base row is that same copy) and the adapters' factors
concatenated, so that a linear candidate is

    W = Σₛ (Σ_{rows i on s} cᵢ)·Xₛ + [c₁U₁ | … | c_KU_K] @ [V₁; …; V_K]

one weighted sum over the few dense copies and one matrix product, and ΔW is never
stored. A tensor that holds a single dense copy and no factors is the same for every
candidate whose coefficients sum to 1: it is written into the live model once and not
kept at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from hf_recycle._merge.sources import TensorSource


class TensorPlan:
    """The resident form of tensor ``key`` over the search's rows.

    Args:
        key: The tensor name.
        rows: The search's rows (checkpoints, then the base when the method needs it).
        low_rank: Keep adapters as factors (``False``: every row dense, as ``read`` gives it).

    Attributes:
        sources: The distinct dense tensors' sources, one per stack row.
        slot: Row ``i`` -> its stack row.
        spans: Row ``i`` -> ``(start, stop)`` columns of its factors, for rows with a ΔW.
        stack: ``(S, *shape)`` dense copies (after :meth:`load`; ``None`` when fixed).
        u: ``(m, R)`` float32 concatenated U factors (scaling folded in), or ``None``.
        v: ``(R, n)`` float32 concatenated V factors, or ``None``.
    """

    def __init__(self, key: str, rows: Sequence[TensorSource], low_rank: bool = True) -> None:
        self.key = key
        self.shape = tuple(rows[0].shape(key))
        self.sources: list[TensorSource] = []
        self.slot: list[int] = []
        self.spans: dict[int, tuple[int, int]] = {}
        index: dict[int, int] = {}
        us: list[torch.Tensor] = []
        vs: list[torch.Tensor] = []
        width = 0
        for i, src in enumerate(rows):
            form = src.low_rank_form(key) if low_rank else None
            dense = src if form is None else form.base
            if id(dense) not in index:
                index[id(dense)] = len(self.sources)
                self.sources.append(dense)
            self.slot.append(index[id(dense)])
            if form is not None and form.u is not None and form.v is not None:
                self.spans[i] = (width, width + form.u.shape[1])
                width += form.u.shape[1]
                us.append(form.u.clone())
                vs.append(form.v.clone())
        self._us, self._vs = us, vs
        self.stack: torch.Tensor | None = None
        self.u: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self._col_row = np.concatenate(
            [np.full(b - a, i) for i, (a, b) in self.spans.items()] or [np.zeros(0, dtype=int)]
        ).astype(int)

    def is_fixed(self, sums_to_one: bool) -> bool:
        """Whether every candidate gives the one dense copy as is (no factors, coefficients sum to 1)."""
        return sums_to_one and len(self.sources) == 1 and not self._us

    def store_dtype(self) -> torch.dtype:
        """The stack's dtype: the sources' common float dtype, else float32."""
        import torch

        dtypes = {src.dtype(self.key) for src in self.sources}
        only = dtypes.pop() if len(dtypes) == 1 else None
        return only if only is not None and only.is_floating_point else torch.float32

    def nbytes(self) -> int:
        """Bytes :meth:`load` will hold (stack and factors)."""
        import torch

        numel = int(np.prod(self.shape))
        stack = len(self.sources) * numel * torch.empty((), dtype=self.store_dtype()).element_size()
        return stack + 4 * sum(u.numel() + v.numel() for u, v in zip(self._us, self._vs, strict=True))

    def load(self, device: torch.device) -> None:
        """Read the dense copies and concatenate the factors on ``device``."""
        import torch

        self.stack = torch.empty((len(self.sources), *self.shape), dtype=self.store_dtype(), device=device)
        for i, src in enumerate(self.sources):
            self.stack[i].copy_(src.read(self.key))
        if self._us:
            self.u = torch.cat(self._us, dim=1).to(device)
            self.v = torch.cat(self._vs, dim=0).to(device)
        self._us, self._vs = [], []

    def mix(self, coef: Sequence[float] | np.ndarray) -> np.ndarray:
        """Coefficients of the stack rows for row coefficients ``coef`` (rows sharing a copy add up)."""
        return np.bincount(self.slot, weights=np.asarray(coef, dtype=np.float64), minlength=len(self.sources))

    def scaled_u(self, coef: Sequence[float] | np.ndarray) -> torch.Tensor | None:
        """``[c₁U₁ | … | c_KU_K]`` for row coefficients ``coef``, or ``None`` without factors."""
        import torch

        if self.u is None:
            return None
        scale = torch.tensor(np.asarray(coef, dtype=np.float64)[self._col_row], dtype=torch.float32)
        return self.u * scale.to(self.u.device)

    def row(self, i: int) -> torch.Tensor:
        """Row ``i`` as a dense tensor: its copy, plus its ΔW (float32) when it has factors."""
        assert self.stack is not None
        dense = self.stack[self.slot[i]]
        span = self.spans.get(i)
        if span is None or self.u is None or self.v is None:
            return dense
        a, b = span
        value = dense.float()
        value = value.view(self.u.shape[0], self.v.shape[1]).addmm(self.u[:, a:b], self.v[a:b])
        return value.view(self.shape)

    @property
    def resident_bytes(self) -> int:
        """Bytes held (stack and factors)."""
        held = [t for t in (self.stack, self.u, self.v) if t is not None]
        return sum(t.numel() * t.element_size() for t in held)


def varying_keys(sources: Sequence[TensorSource], keys: Sequence[str], sums_to_one: bool) -> set[str]:
    """The tensors whose candidate depends on the weights, from the headers only.

    The header-only twin of :meth:`TensorPlan.is_fixed`: every tensor varies, unless the
    coefficients sum to 1 and every input is a LoRA adapter over the one base, in which case
    only the tensors some adapter changes (ΔW, bias or a replaced module) vary; the others are
    the base's for every candidate.
    """
    from hf_recycle._merge.lora import LoraSource

    adapters = [s for s in sources if isinstance(s, LoraSource)]
    if not sums_to_one or len(adapters) != len(sources):
        return set(keys)
    return {k for k in keys if any(a.changes(k) for a in adapters)}
