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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from hf_recycle.errors import IncompatibleCheckpointsError, MergeConfigError
from hf_recycle.search.resident import (
    NEEDS_BASE,
    ResidentModel,
    _check_compatible,
    default_normalize,
    pick_device,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from hf_recycle.merge.sources import TensorSource

logger = logging.getLogger(__name__)


class StreamedModel:
    """A live model whose weights are rewritten per trial from the checkpoint files.

    Takes the arguments of :class:`~hf_recycle.search.resident.ResidentModel` (but
    ``resident_device``) and gives the same candidates.

    Attributes:
        model: The live ``transformers`` model; scorers run it directly.
        names: Names of the tensors rewritten per candidate, in model order.
        bytes_read: Bytes read from the checkpoints by every :meth:`set_weights` so far.
    """

    def __init__(
        self,
        sources: Sequence[TensorSource],
        *,
        base: TensorSource | None = None,
        method: str = "linear",
        lambda_: float = 1.0,
        normalize: bool | None = None,
        seed: int = 0,
        dtype: str = "auto",
        device: str = "auto",
        group_of: Callable[[str], int] | dict[str, int] | None = None,
    ) -> None:
        import torch

        if len(sources) < 2:
            raise IncompatibleCheckpointsError(f"a merge needs at least 2 checkpoints, got {len(sources)}")
        if method in NEEDS_BASE and base is None:
            raise MergeConfigError(
                f"merge method '{method}' needs a base checkpoint: add 'base: <spec>' to the recipe"
            )
        self.method = method
        self.lambda_ = float(lambda_)
        self.normalize = default_normalize(method) if normalize is None else bool(normalize)
        self.seed = seed
        self.n_checkpoints = len(sources)
        self.device = torch.device(pick_device(device))
        keys = _check_compatible(sources, base)
        self.model = ResidentModel._build_model(self, sources[0], dtype)  # type: ignore[arg-type]
        targets = ResidentModel._targets(self, keys, sources[0])  # type: ignore[arg-type]
        self.names = list(targets)
        self._targets = targets
        self._params: list[torch.Tensor] = [targets[n] for n in self.names]
        if isinstance(group_of, dict):
            self._group = [group_of.get(n, 0) for n in self.names]
        elif callable(group_of):
            self._group = [int(group_of(n)) for n in self.names]
        else:
            self._group = [0] * len(self.names)
        self._group_by_name = dict(zip(self.names, self._group, strict=True))
        self.sources = list(sources)
        self.base = base if method in NEEDS_BASE else None
        self.bytes_read = 0
        logger.info(
            "streamed model: %d tensors x %d checkpoints read from disk per trial, live model on %s",
            len(self.names),
            self.n_checkpoints + (self.base is not None),
            self.device,
        )
        self.model.eval()

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

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The rewritten tensors of the live model, keyed by checkpoint tensor name."""
        return dict(zip(self.names, self._params, strict=True))

    @property
    def resident_bytes(self) -> int:
        """Bytes held by resident checkpoint stacks: none."""
        return 0

    @property
    def live_bytes(self) -> int:
        """Bytes of the rewritten live tensors."""
        return sum(p.numel() * p.element_size() for p in self._params)
