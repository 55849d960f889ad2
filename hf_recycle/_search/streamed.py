"""The ``disk`` tier candidate model: one live model, nothing else resident.

Each trial streams every checkpoint's tensors from their files (after the first trial only
the tensors some input changes: a LoRA pool's untargeted tensors stay the base's), block of
rows by block of rows, through the merge engine (:class:`~hf_recycle._merge.streaming.StreamingMerger`:
the same readers, methods, TIES statistics, DARE masks and LoRA folding as
``hf-recycle merge``) and writes the merged blocks straight into the live model's
parameters. Memory holds the live model and the engine's block buffers; the page cache
keeps hot checkpoint files in RAM without counting them against the process.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from hf_recycle._search.live import LiveModel, coefficients_sum_to_one
from hf_recycle._search.lora_candidate import varying_keys

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from hf_recycle._merge.sources import TensorSource

logger = logging.getLogger(__name__)


class StreamedModel(LiveModel):
    """A live model whose weights are rewritten per trial from the checkpoint files.

    Takes the arguments of :class:`~hf_recycle._search.live.LiveModel` and gives the same
    candidates as :class:`~hf_recycle._search.resident.ResidentModel`.

    Args:
        keep_factors: Keep the LoRA adapters' float32 factors after the first trial reads
            them (:attr:`~hf_recycle._search.memory.MemoryPlan.keep_factors` says whether
            they fit), instead of reading and converting them every trial.
        compiled_sum: Sum low-precision blocks with the native kernel
            (:attr:`~hf_recycle._search.memory.MemoryPlan.compiled_sum` decides; see
            :mod:`~hf_recycle._merge.fused`).

    Attributes:
        model: The live ``transformers`` model; scorers run it directly.
        names: Names of the tensors rewritten per candidate, in model order.
        bytes_read: Bytes read from the checkpoints by every :meth:`set_weights` so far.
    """

    def __init__(
        self,
        sources: Sequence[TensorSource],
        *,
        keep_factors: bool = False,
        compiled_sum: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(sources, **options)
        self._compiled_sum = compiled_sum
        self._factors: dict[tuple[str, int], Any] | None = {} if keep_factors else None
        self._group_by_name = dict(zip(self.names, self._group, strict=True))
        self.sources = list(sources)
        self.bytes_read = 0
        # tensors no candidate changes (a LoRA pool's untargeted ones) are written by the first trial only
        sums_to_one = coefficients_sum_to_one(self.method, self.normalize)
        self._varying = varying_keys(self.sources, self.sources[0].keys(), sums_to_one)
        self._written_once = False
        logger.info(
            "streamed model: %d tensors x %d checkpoints read from disk per trial, live model on %s",
            len(self.names),
            self.n_checkpoints + (self.base is not None),
            self.device,
        )

    def set_weights(self, weights: np.ndarray | Sequence[float], density: float | None = None) -> None:
        """Write the merge of ``weights`` (``(K,)`` or ``(G, K)``) into the live model, in place."""
        import torch

        from hf_recycle._merge.methods import GroupWeights
        from hf_recycle._merge.streaming import StreamingMerger

        w = self._weight_matrix(weights)
        method, params = self._method_params(density)
        last = w.shape[0] - 1
        rows = {str(g): [float(x) for x in w[g]] for g in range(w.shape[0])}

        def assign(names: Sequence[str]) -> dict[str, str]:
            return {n: str(min(self._group_by_name.get(n, 0), last)) for n in names}

        merger = StreamingMerger(
            self.sources,
            self.base,
            method,
            GroupWeights(rows, assign),
            params,
            out_dtype=self.dtype,
            device=self.device,
            low_rank_cache=self._factors,
            compiled_sum=self._compiled_sum,
        )
        with torch.no_grad():  # tensors no candidate changes are written by the first trial only
            merger.stream(self, keys=self._varying if self._written_once else None)
        self._written_once = True
        self.bytes_read += merger.input_bytes

    def write(self, key: str, data: torch.Tensor, row_start: int = 0) -> None:
        """The engine's sink: copy merged rows ``row_start``… of ``key`` into the live tensor."""
        param = self._targets.get(key)
        if param is None:  # a tied head or a non-float buffer the live model does not take
            return
        if param.dim() == 0:
            param.copy_(data.reshape(()))
        else:
            param[row_start : row_start + data.shape[0]].copy_(data)

    def destination(self, key: str, row_start: int, rows: int) -> torch.Tensor | None:
        """The engine's shortcut: the live tensor's rows to cast merged rows straight into."""
        param = self._targets.get(key)
        if param is None or param.dim() == 0 or not param.is_contiguous():
            return None
        return param[row_start : row_start + rows]

    @property
    def resident_bytes(self) -> int:
        """Bytes held by resident checkpoint stacks: none."""
        return 0
