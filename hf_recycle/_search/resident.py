"""The resident candidate model: one live model whose weights are rewritten per trial.

The architecture is built once (on the GPU when there is one). Every checkpoint's
tensors stay resident, stacked per tensor as ``(K, *shape)`` (GPU memory when they
fit, else CPU RAM), and a candidate's weighted sum is written into the live model's
parameters in place, through reused buffers: no disk round trip and no model rebuild
per trial. With the stacks in CPU RAM and the live model on a GPU (the host tier), the
CPU computes the candidate a chunk of rows at a time and the copy pipeline of
:mod:`~hf_recycle._search.host_tier` sends each chunk while the next is computed.

Linear and task-arithmetic merges are one weighted sum per tensor (task arithmetic
``base + λ Σ wᵢ (θᵢ − base)`` is the weighted sum with coefficients ``λwᵢ`` on the
checkpoints and ``1 − λΣwᵢ`` on the base). For float32 stacks it is one
matrix-vector product per tensor written straight into the parameter: one read of
the K resident copies and one write, the memory-bandwidth floor. TIES and DARE go
through the merge engine's combine functions, tensor by tensor.

LoRA adapters are not densified: per tensor the resident model keeps their shared base
once and their factors, and a candidate adds all adapters' deltas with one product of
concatenated factors (see :mod:`hf_recycle._search.lora_candidate`). Tensors no input
changes are written into the live model once and not kept.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from hf_recycle._merge import fused
from hf_recycle._merge.methods import get_method
from hf_recycle._search.host_tier import HOST_CHUNK_ELEMENTS, ChunkPipeline
from hf_recycle._search.live import LiveModel, coefficients_sum_to_one
from hf_recycle._search.lora_candidate import TensorPlan

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from hf_recycle._merge.sources import TensorSource

logger = logging.getLogger(__name__)


class ResidentModel(LiveModel):
    """A live model plus the resident checkpoint tensors it is rewritten from.

    Args:
        sources, base, method, lambda_, normalize, seed, dtype, device, group_of: As for
            :class:`~hf_recycle._search.live.LiveModel`.
        resident_device: Where the checkpoint stacks live; default: ``device`` when they fit.
        low_rank: Keep LoRA adapters as their base plus factors (``False``: densify each
            adapter as base + ΔW, the reference path).
        host_chunk: Elements per chunk of the host tier's copy pipeline. The pipeline is
            used when the stacks are not where the live model is (``resident_device`` CPU,
            live model on a GPU), or whenever this is given (tests run it on the CPU).
        compiled_sum: Sum low-precision stacks with the native kernel on the CPU (see
            :mod:`~hf_recycle._merge.fused`); the search passes the memory plan's
            :attr:`~hf_recycle._search.memory.MemoryPlan.compiled_sum`.

    Attributes:
        model: The live ``transformers`` model; scorers run it directly.
        names: Names of the tensors rewritten per candidate, in model order.
    """

    def __init__(
        self,
        sources: Sequence[TensorSource],
        *,
        resident_device: str | None = None,
        low_rank: bool = True,
        host_chunk: int | None = None,
        compiled_sum: bool = False,
        **options: Any,
    ) -> None:
        import torch

        super().__init__(sources, **options)
        rows = [*sources, *([self.base] if self.base is not None else [])]
        self.has_base_row = len(rows) > len(sources)
        sums_to_one = coefficients_sum_to_one(self.method, self.normalize)
        plans = [TensorPlan(key, rows, low_rank=low_rank) for key in self.names]
        total = sum(plan.nbytes() for plan in plans if not plan.is_fixed(sums_to_one))
        self.resident_device = torch.device(resident_device or self._fit_device(total))
        self._plans: list[TensorPlan | None] = []
        with torch.no_grad():
            for plan, param in zip(plans, self._params, strict=True):
                if plan.is_fixed(sums_to_one):  # the same for every candidate: written once
                    param.copy_(plan.sources[0].read(plan.key))
                    self._plans.append(None)
                else:
                    plan.load(self.resident_device)
                    self._plans.append(plan)
        logger.info(
            "resident model: %d of %d tensors x %d checkpoints (%.1f MB) on %s, live model on %s",
            len(self.stacked),
            len(self.names),
            len(rows),
            self.resident_bytes / 1e6,
            self.resident_device,
            self.device,
        )
        max_numel = max(
            (p.numel() for p, plan in zip(self._params, self._plans, strict=True) if plan), default=1
        )
        self._buffer = torch.empty(max_numel, dtype=torch.float32, device=self.resident_device)
        self._pipeline: ChunkPipeline | None = None
        if host_chunk is not None or self.resident_device != self.device:
            kept = [p for p, plan in zip(self._params, self._plans, strict=True) if plan is not None]
            widest = max((_rows_cols(p)[1] for p in kept), default=1)
            self._pipeline = ChunkPipeline(self.device, max(host_chunk or HOST_CHUNK_ELEMENTS, widest))
        self._workspace: Any = None
        # one native pass per tensor for the weighted sums of big low-precision stacks on the CPU
        self._fused = self.resident_device.type == "cpu" and compiled_sum
        logger.debug("resident model: native weighted sums %s", "on" if self._fused else "off")

    # --- construction -------------------------------------------------------------------

    def _fit_device(self, total_bytes: int) -> str:
        import torch

        if self.device.type != "cuda":
            return "cpu"
        free, _ = torch.cuda.mem_get_info(self.device)
        if total_bytes < 0.8 * free:
            return str(self.device)
        logger.warning(
            "checkpoints (%.1f GB) do not fit in free GPU memory (%.1f GB): keeping them in CPU RAM",
            total_bytes / 1e9,
            free / 1e9,
        )
        return "cpu"

    # --- candidates ---------------------------------------------------------------------

    def coefficients(self, weights: np.ndarray) -> np.ndarray:
        """Per-group coefficients of the resident rows (K checkpoints, then the base) for linear methods."""
        method, params = self._method_params(None)
        rows = []
        for row in self._weight_matrix(weights):
            a, b = method.linear_coefficients([float(x) for x in row], params)
            rows.append([*a, b] if self.has_base_row else a)
        return np.asarray(rows, dtype=np.float64)

    def set_weights(self, weights: np.ndarray | Sequence[float], density: float | None = None) -> None:
        """Write the merge of ``weights`` (``(K,)`` or ``(G, K)``) into the live model, in place."""
        import torch

        w = self._weight_matrix(weights)
        with torch.no_grad():
            if not get_method(self.method).linear_in_delta:
                self._set_with_method(w, density)
                return
            coef = self.coefficients(w)
            if self._pipeline is not None:
                self._pipeline.begin()
            for param, plan, g in zip(self._params, self._plans, self._group, strict=True):
                if plan is not None:
                    self._weighted_sum(param, plan, coef[min(g, len(coef) - 1)])
            if self._pipeline is not None:
                self._pipeline.finish()

    def _weighted_sum(self, param: torch.Tensor, plan: TensorPlan, coef: np.ndarray) -> None:
        """``param`` = Σ mixᵢ·stackᵢ (+ the adapters' deltas as one product of concatenated factors).

        Float32 stacks next to a float32 parameter: one matrix-vector product straight into the
        parameter. Otherwise whole rows a block at a time (so the float32 sums stay in cache),
        each block written into the parameter, or, in the host tier, sent through the copy
        pipeline while the next block is computed (see :class:`~hf_recycle._search.host_tier.ChunkPipeline`).
        """
        import torch

        stack = plan.stack
        assert stack is not None
        mix = plan.mix(coef)
        mix_t = torch.tensor(mix, dtype=torch.float32, device=self.resident_device)
        u = plan.scaled_u(coef)
        pipeline = self._pipeline
        if (
            pipeline is None
            and stack.dtype == torch.float32
            and param.dtype == torch.float32
            and param.device == stack.device
        ):  # one pass: read the rows, write the parameter (then add the deltas)
            torch.mv(stack.view(stack.shape[0], -1).t(), mix_t, out=param.view(-1))
            if u is not None:
                param.view(u.shape[0], -1).addmm_(u, plan.v)
            return
        if pipeline is None and self._fused and self._fused_sum(param, stack, mix_t, u, plan):
            return  # one native pass over the whole tensor
        rows, cols = _rows_cols(param)
        k = stack.shape[0]
        flat = stack.view(k, rows, cols)
        dest = param.view(rows, cols)  # live parameters are contiguous
        if pipeline is not None:
            block_elements = pipeline.chunk
        elif self.resident_device.type == "cpu":
            block_elements = CACHE_BLOCK_ELEMENTS
        else:  # a GPU streams whole tensors at full bandwidth
            block_elements = rows * cols
        step = max(1, block_elements // cols)
        to_pipeline = pipeline is not None and param.dtype == torch.float32
        # the host tier's chunks (without a pipeline the whole tensor was offered above)
        fused_chunks = self._fused and pipeline is not None
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            n = (r1 - r0) * cols
            block = flat[:, r0:r1].reshape(k, n)
            if fused_chunks and u is None and not to_pipeline:
                out = pipeline.buffer(param.dtype, n)  # summed and cast in one pass, then sent
                if fused.weighted_sum(out, [block[i] for i in range(k)], mix_t) is not None:
                    pipeline.send(dest[r0:r1].view(-1), out)
                    continue
            acc = pipeline.buffer(torch.float32, n) if to_pipeline else self._buffer[:n]
            summed = fused_chunks and fused.weighted_sum(acc, [block[i] for i in range(k)], mix_t) is not None
            if not summed:
                _accumulate(acc, block, mix, mix_t)
            if u is not None:
                acc.view(r1 - r0, cols).addmm_(u[r0:r1], plan.v)
            if pipeline is None:
                dest[r0:r1].view(-1).copy_(acc)
            else:
                pipeline.send(
                    dest[r0:r1].view(-1), acc if to_pipeline else pipeline.buffer(param.dtype, n).copy_(acc)
                )

    def _fused_sum(
        self,
        param: torch.Tensor,
        stack: torch.Tensor,
        mix_t: torch.Tensor,
        u: torch.Tensor | None,
        plan: TensorPlan,
    ) -> bool:
        """The weighted sum as one native pass over the whole tensor (see :mod:`~hf_recycle._merge.fused`).

        Into the parameter itself, or, when adapters' deltas are to be added, into the float32
        buffer first. ``False`` where the native sum does not apply (the caller sums eagerly).
        """
        k = stack.shape[0]
        flat = stack.view(k, -1)
        direct = u is None and param.is_contiguous()
        target = param.view(-1) if direct else self._buffer[: param.numel()]
        if fused.weighted_sum(target, [flat[i] for i in range(k)], mix_t) is None:
            return False
        if not direct:
            if u is not None:
                target.view(u.shape[0], -1).addmm_(u, plan.v)
            param.copy_(target.view(param.shape))
        return True

    def _set_with_method(self, w: np.ndarray, density: float | None) -> None:
        """TIES/DARE need every row's dense tensor: adapters' ΔW is built per tensor, then dropped."""
        from hf_recycle._merge.methods import Workspace

        method, params = self._method_params(density)
        if self._workspace is None:
            self._workspace = Workspace(self.resident_device)
        k = self.n_checkpoints
        for name, param, plan, g in zip(self.names, self._params, self._plans, self._group, strict=True):
            if plan is None:  # no task vector anywhere: the base
                continue
            row = [float(x) for x in w[min(g, w.shape[0] - 1)]]
            out = self._buffer[: param.numel()].view(param.shape)
            tensors = [plan.row(i) for i in range(k)]
            base = plan.row(k) if self.has_base_row else None
            method.combine(tensors, row, base, params, name, out=out, workspace=self._workspace)
            del tensors
            param.copy_(out)

    @property
    def stacked(self) -> list[str]:
        """Names of the tensors that hold resident copies or factors (the others are written once)."""
        return [name for name, plan in zip(self.names, self._plans, strict=True) if plan is not None]

    @property
    def resident_bytes(self) -> int:
        """Bytes held by the resident checkpoint stacks and adapter factors."""
        return sum(plan.resident_bytes for plan in self._plans if plan is not None)


def _rows_cols(param: torch.Tensor) -> tuple[int, int]:
    """``param`` as a matrix of whole rows (its first dimension), for chunking."""
    rows = int(param.shape[0]) if param.dim() else 1
    return rows, param.numel() // max(rows, 1)


#: Elements of float32 sums kept in cache while K rows of a low-precision stack are added in.
CACHE_BLOCK_ELEMENTS = 1 << 20


def _accumulate(acc: torch.Tensor, block: torch.Tensor, mix: np.ndarray, mix_t: torch.Tensor) -> None:
    """``acc`` = Σ mixᵢ·blockᵢ over the ``(K, n)`` rows of ``block``, in float32.

    Float32 rows: one matrix-vector product. Other dtypes: the sum of K converted rows, a
    cache-sized piece at a time, so the float32 partial sums are not written to and read
    back from memory K times.
    """
    import torch

    if block.dtype == torch.float32:
        torch.mv(block.t(), mix_t, out=acc)
        return
    n = acc.numel()
    for s in range(0, n, CACHE_BLOCK_ELEMENTS):
        e = min(n, s + CACHE_BLOCK_ELEMENTS)
        part = acc[s:e]
        part.copy_(block[0, s:e])
        if float(mix[0]) != 1.0:
            part.mul_(float(mix[0]))
        for i in range(1, block.shape[0]):
            part.add_(block[i, s:e], alpha=float(mix[i]))
