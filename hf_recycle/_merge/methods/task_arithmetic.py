"""``task_arithmetic``, and the task-vector body shared with TIES and DARE."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from hf_recycle._merge.methods._base import (
    MergeMethod,
    MethodParams,
    TensorStats,
    as_float32,
    prepare,
    row_offset,
)
from hf_recycle._merge.methods.sparsify import apply_threshold, dare_keep_mask, magnitude_threshold
from hf_recycle.errors import MergeConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch


class TaskVectorMethod(MergeMethod):
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
        ws, out = prepare(tensors, out, workspace)
        shape = tensors[0].shape
        offset = row_offset(tensors[0], rows)
        if numel is None:
            if rows is not None and self.sparsify == "random":
                raise ValueError(
                    "dare methods need numel (the whole tensor's size) when combining row blocks"
                )
            numel = tensors[0].numel()
        base32 = as_float32(base, ws, "base")
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
                apply_threshold(delta, stats.thresholds[i], offset)
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
        import torch

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


class TaskArithmetic(TaskVectorMethod):
    """θ_base + λ·Σ wᵢτᵢ (editing models with task vectors)."""

    name = "task_arithmetic"
    linear_in_delta = True
    order = 1
    pretty_name = "Task Arithmetic"
    reference_url = "https://arxiv.org/abs/2212.04089"

    def linear_coefficients(self, weights, params):
        total = float(sum(weights))
        scale = params.lambda_ / (total if params.normalize and abs(total) >= 1e-8 else 1.0)
        a = [float(w) * scale for w in weights]
        return a, 1.0 - sum(a)
