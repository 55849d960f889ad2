"""The live model a search rewrites per trial, and what every candidate model shares.

:class:`LiveModel` builds the architecture once (on the GPU when there is one), checks
that the checkpoints agree, and maps each rewritten tensor to its live parameter and its
weight group. :class:`~hf_recycle._search.resident.ResidentModel` (inputs kept in memory)
and :class:`~hf_recycle._search.streamed.StreamedModel` (inputs streamed from disk) differ
only in how ``set_weights`` computes a candidate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from hf_recycle._merge.methods import get_method
from hf_recycle.errors import IncompatibleCheckpointsError, MergeConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from hf_recycle._merge.sources import TensorSource

logger = logging.getLogger(__name__)

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def default_normalize(method: str, parameterization: str = "simplex") -> bool:
    """Normalization used when the recipe leaves ``merge.normalize`` unset.

    Linear merges normalize (divide by Σw) by default, except when the search space is
    deliberately unnormalized (``nonnegative``/``signed``); the others follow the merge
    engine's defaults (ties normalizes; task arithmetic, DARE-linear and DARE-TIES do not),
    so that a candidate equals ``hf-recycle merge`` of the same weights.
    """

    if method == "linear":
        return parameterization in ("simplex", "simplex_box")
    return get_method(method).default_normalize


def coefficients_sum_to_one(method: str, normalize: bool) -> bool:
    """Whether a candidate's coefficients on its rows sum to 1: all but an unnormalized linear merge
    (which scales even the tensors no input changes by Σw)."""
    return not (method == "linear" and not normalize)


def _check_compatible(sources: Sequence[TensorSource], base: TensorSource | None) -> list[str]:
    """The tensor names of the merge, after the merge engine's own check of every input and the base.

    Raises:
        IncompatibleCheckpointsError, ShapeMismatchError: As :func:`hf_recycle._merge.compat.check_compatible`
            (every problem listed, not only the first).
    """
    from hf_recycle._merge.compat import check_compatible

    check_compatible([*sources, *([base] if base is not None else [])])
    return list(sources[0].keys())


def pick_device(device: str = "auto") -> str:
    """The device the live model runs on, by the merge engine's rules (:func:`~hf_recycle._merge.engine.resolve_device`)."""
    from hf_recycle._merge.engine import resolve_device

    return str(resolve_device(device))


class LiveModel:
    """A live ``transformers`` model whose rewritten tensors are known by checkpoint name.

    Args:
        sources: The K checkpoints, as tensor sources (all of one architecture).
        base: The base checkpoint, needed by task-vector methods.
        method: A registered merge method's name (:data:`hf_recycle._merge.methods.METHOD_NAMES`).
        lambda_: Scale of the merged task vector (task-vector methods).
        normalize: Divide by the weight sum (see :func:`default_normalize` for ``None``).
        seed: Seed of DARE's random masks.
        dtype: Dtype of the live model (``auto``: the checkpoints' stored dtype).
        device: Where the live model runs (``auto``: CUDA when available).
        group_of: Tensor name -> row of the candidate's weight matrix (all 0 when ``None``).

    Attributes:
        model: The live ``transformers`` model; scorers run it directly.
        names: Names of the tensors rewritten per candidate, in model order.
        base: The base the merge mixes in (task-vector methods), else ``None``.
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
        if get_method(method).needs_base and base is None:
            raise MergeConfigError(
                f"merge method '{method}' needs a base checkpoint: add 'base: <spec>' to the recipe"
            )
        self.method = method
        self.lambda_ = float(lambda_)
        self.normalize = default_normalize(method) if normalize is None else bool(normalize)
        self.seed = seed
        self.n_checkpoints = len(sources)
        self.base = base if get_method(method).needs_base else None  # the base row the merge mixes in
        self.device = torch.device(pick_device(device))
        keys = _check_compatible(sources, base)
        self.model = self._build_model(sources[0], dtype)
        self._targets = self._live_tensors(keys, sources[0])
        self.names = list(self._targets)
        self._params: list[torch.Tensor] = [self._targets[n] for n in self.names]
        if isinstance(group_of, dict):
            self._group = [group_of.get(n, 0) for n in self.names]
        elif callable(group_of):
            self._group = [int(group_of(n)) for n in self.names]
        else:
            self._group = [0] * len(self.names)
        self.model.eval()

    def _weight_matrix(self, weights: Any) -> np.ndarray:
        """``weights`` (``(K,)`` or ``(G, K)``) as a ``(G, K)`` float64 array, checked."""
        w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        if w.shape[1] != self.n_checkpoints:
            raise MergeConfigError(f"{w.shape[1]} weights given for {self.n_checkpoints} checkpoints")
        if self.method == "linear" and self.normalize and np.any(np.abs(w.sum(axis=1)) < 1e-12):
            raise MergeConfigError(
                "the merge weights sum to 0 and normalize is on: weights cannot be normalized"
            )
        return w

    def _method_params(self, density: float | None) -> tuple[Any, Any]:
        """The registered merge method and its resolved parameters for one candidate."""
        from hf_recycle._merge.methods import resolve_params

        method = get_method(self.method)
        params = resolve_params(
            method,
            density=density if method.uses_density else None,
            lambda_=self.lambda_,
            normalize=self.normalize,
            seed=self.seed,
        )
        return method, params

    def _build_model(self, source: TensorSource, dtype: str) -> Any:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        cfg = dict(source.config)
        model_type = cfg.pop("model_type", None)
        if model_type is None:
            raise IncompatibleCheckpointsError(f"checkpoint '{source.name}' has no model_type in config.json")
        config = AutoConfig.for_model(model_type, **cfg)
        if dtype == "auto":
            first = source.keys()[0]
            torch_dtype = source.dtype(first) if source.dtype(first).is_floating_point else torch.float32
        else:
            torch_dtype = getattr(torch, _DTYPES[dtype])
        self.dtype = torch_dtype
        with torch.device(self.device):
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
        return model.to(torch_dtype)

    def _live_tensors(self, keys: list[str], source: TensorSource) -> dict[str, torch.Tensor]:
        """Live tensors (parameters and persistent float buffers) keyed by their checkpoint name."""
        available = set(keys)
        targets: dict[str, Any] = {}
        seen: set[int] = set()
        for name, param in self.model.named_parameters():
            if id(param) in seen:
                continue
            seen.add(id(param))
            if name not in available:
                raise IncompatibleCheckpointsError(
                    f"the model built from '{source.name}' has parameter '{name}' that the checkpoint does not "
                    "store: the checkpoint does not match its config.json"
                )
            targets[name] = param.data
        for name, buf in self.model.named_buffers():
            if name in available and buf.is_floating_point() and id(buf) not in seen:
                seen.add(id(buf))
                targets[name] = buf
        return targets

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The rewritten tensors of the live model, keyed by checkpoint tensor name."""
        return dict(zip(self.names, self._params, strict=True))

    @property
    def live_bytes(self) -> int:
        """Bytes of the rewritten live tensors."""
        return sum(p.numel() * p.element_size() for p in self._params)
