"""The ``disk`` tier candidate model: one live model, nothing else resident.

Each trial streams every checkpoint's tensors from their files, block of rows by block
of rows, through the merge engine (:class:`~hf_recycle.merge.streaming.StreamingMerger`:
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

from hf_recycle.errors import MergeConfigError
from hf_recycle.search.live import NEEDS_BASE, LiveModel

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from hf_recycle.merge.sources import TensorSource

logger = logging.getLogger(__name__)


class StreamedModel(LiveModel):
    """A live model whose weights are rewritten per trial from the checkpoint files.

    Takes the arguments of :class:`~hf_recycle.search.live.LiveModel` and gives the same
    candidates as :class:`~hf_recycle.search.resident.ResidentModel`.

    Attributes:
        model: The live ``transformers`` model; scorers run it directly.
        names: Names of the tensors rewritten per candidate, in model order.
        bytes_read: Bytes read from the checkpoints by every :meth:`set_weights` so far.
    """

    def __init__(self, sources: Sequence[TensorSource], **options: Any) -> None:
        super().__init__(sources, **options)
        self._group_by_name = dict(zip(self.names, self._group, strict=True))
        self.sources = list(sources)
        self.base = options.get("base") if self.method in NEEDS_BASE else None
        self.bytes_read = 0
        logger.info(
            "streamed model: %d tensors x %d checkpoints read from disk per trial, live model on %s",
            len(self.names),
            self.n_checkpoints + (self.base is not None),
            self.device,
        )

    def set_weights(self, weights: np.ndarray | Sequence[float], density: float | None = None) -> None:
        """Write the merge of ``weights`` (``(K,)`` or ``(G, K)``) into the live model, in place."""
        import torch

        from hf_recycle.merge.methods import GroupWeights, get_method, resolve_params
        from hf_recycle.merge.streaming import StreamingMerger

        w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        if w.shape[1] != self.n_checkpoints:
            raise MergeConfigError(f"{w.shape[1]} weights given for {self.n_checkpoints} checkpoints")
        if self.method == "linear" and self.normalize and np.any(np.abs(w.sum(axis=1)) < 1e-12):
            raise MergeConfigError(
                "the merge weights sum to 0 and normalize is on: weights cannot be normalized"
            )
        method = get_method(self.method)
        params = resolve_params(
            method,
            density=density if method.uses_density else None,
            lambda_=self.lambda_,
            normalize=self.normalize,
            seed=self.seed,
        )
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
        )
        with torch.no_grad():
            merger.stream(self)
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

    @property
    def resident_bytes(self) -> int:
        """Bytes held by resident checkpoint stacks: none."""
        return 0
