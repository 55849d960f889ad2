"""The search space: Optuna parameters <-> merge weights.

A candidate is a ``(G, K)`` matrix of weights, one row per *group* of tensors and one
column per checkpoint (``G == 1`` for ``granularity: model``), plus an optional
density for ties/dare. Groups for ``granularity: layers:N`` are the embeddings, each
block of N transformer layers, and the head (final norm, ``lm_head``), in model order.

Parameterizations of one row ``x`` of free variables (one per checkpoint):

- ``simplex`` (the paper's): ``x_i`` in ``[0, 1]``, ``w = x / sum(x)`` (``x == 0``
  maps to the uniform soup). Every point of the simplex is reachable, corners
  included: ``w`` is produced by ``x = w / max(w)`` (:meth:`SearchSpace.params_for`).
- ``nonnegative``: ``w_i = x_i`` in ``[0, 1]``, unnormalized.
- ``signed``: ``w_i = x_i`` in ``[-1, 1]``, unnormalized.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hf_recycle.errors import SearchError

if TYPE_CHECKING:  # pragma: no cover
    import optuna

PARAMETERIZATIONS = ("simplex", "nonnegative", "signed")
DENSITY_RANGE = (0.1, 1.0)
MODEL_GROUP = "all"
EMBEDDINGS_GROUP = "embeddings"
HEAD_GROUP = "head"

_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")
_EMBED_RE = re.compile(r"(embed|wte|wpe|word_embeddings|position_embeddings|token_type_embeddings)")


@dataclass(frozen=True)
class Candidate:
    """One point of the space: merge weights and, for ties/dare, a density.

    Attributes:
        weights: ``(G, K)`` float64 array, one row per tensor group, one column per checkpoint.
        density: Density of ties/dare, or ``None`` when it is not searched.
    """

    weights: np.ndarray
    density: float | None = None


def layer_index(tensor_name: str) -> int | None:
    """Index of the transformer layer a tensor belongs to (``model.layers.3.mlp...`` -> 3)."""
    match = _LAYER_RE.search(tensor_name)
    return int(match.group(1)) if match else None


def group_tensors(names: Sequence[str], layers_per_group: int | None) -> tuple[list[str], dict[str, int]]:
    """Assign every tensor to a group.

    Args:
        names: Tensor names of the model.
        layers_per_group: N of ``layers:N``, or ``None`` for one group per model.

    Returns:
        ``(group_names, group_of)``: the group names in model order (embeddings, layer
        blocks ``layers.0-3``..., head) and each tensor's group index.
    """
    if layers_per_group is None:
        return [MODEL_GROUP], {name: 0 for name in names}
    layers = sorted({i for i in map(layer_index, names) if i is not None})
    n_layers = (layers[-1] + 1) if layers else 0
    blocks = [
        f"layers.{start}-{min(start + layers_per_group, n_layers) - 1}"
        for start in range(0, n_layers, layers_per_group)
    ]
    key_of: dict[str, str] = {}
    for name in names:
        idx = layer_index(name)
        if idx is not None:
            key_of[name] = blocks[idx // layers_per_group]
        elif _EMBED_RE.search(name):
            key_of[name] = EMBEDDINGS_GROUP
        else:
            key_of[name] = HEAD_GROUP
    used = set(key_of.values())
    groups = [g for g in [EMBEDDINGS_GROUP, *blocks, HEAD_GROUP] if g in used]
    index = {g: i for i, g in enumerate(groups)}
    return groups, {name: index[g] for name, g in key_of.items()}


@dataclass(frozen=True)
class SearchSpace:
    """Optuna parameters of a merge search and their map to :class:`Candidate` weights.

    Attributes:
        n_checkpoints: K, the number of checkpoints merged.
        groups: Names of the tensor groups (``("all",)`` for ``granularity: model``).
        parameterization: ``simplex``, ``nonnegative`` or ``signed``.
        search_density: Whether a ``density`` parameter is searched (ties/dare).
        default_density: Density used by candidates when it is not searched.
    """

    n_checkpoints: int
    groups: tuple[str, ...] = (MODEL_GROUP,)
    parameterization: str = "simplex"
    search_density: bool = False
    default_density: float | None = None

    def __post_init__(self) -> None:
        if self.n_checkpoints < 2:
            raise SearchError(
                f"a merge search needs at least 2 checkpoints, got {self.n_checkpoints}: "
                "list more checkpoints in the recipe (or a glob such as org/run@step-*)"
            )
        if self.parameterization not in PARAMETERIZATIONS:
            raise SearchError(
                f"unknown weights parameterization '{self.parameterization}': use one of {', '.join(PARAMETERIZATIONS)}"
            )

    # --- parameters -------------------------------------------------------------------

    @property
    def bounds(self) -> tuple[float, float]:
        """Range of every weight variable."""
        return (-1.0, 1.0) if self.parameterization == "signed" else (0.0, 1.0)

    def param_name(self, group: int, checkpoint: int) -> str:
        """Optuna name of the variable of ``checkpoint`` in ``group`` (``w003``, ``layers.0-3/w003``)."""
        prefix = "" if len(self.groups) == 1 else f"{self.groups[group]}/"
        return f"{prefix}w{checkpoint:03d}"

    def param_names(self) -> list[str]:
        """Every parameter name, groups outer, checkpoints inner, then ``density``."""
        names = [self.param_name(g, k) for g in range(len(self.groups)) for k in range(self.n_checkpoints)]
        return [*names, "density"] if self.search_density else names

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """Optuna distributions of every parameter."""
        from optuna.distributions import FloatDistribution

        low, high = self.bounds
        dists: dict[str, Any] = {
            self.param_name(g, k): FloatDistribution(low, high)
            for g in range(len(self.groups))
            for k in range(self.n_checkpoints)
        }
        if self.search_density:
            dists["density"] = FloatDistribution(*DENSITY_RANGE)
        return dists

    def suggest(self, trial: optuna.trial.BaseTrial) -> Candidate:
        """Ask ``trial`` for every parameter and map them to a candidate."""
        params = {name: trial.suggest_float(name, d.low, d.high) for name, d in self.distributions().items()}
        return self.candidate(params)

    # --- maps ---------------------------------------------------------------------------

    def candidate(self, params: dict[str, float]) -> Candidate:
        """The candidate of a parameter dict (as stored in a trial)."""
        x = np.array(
            [
                [params[self.param_name(g, k)] for k in range(self.n_checkpoints)]
                for g in range(len(self.groups))
            ],
            dtype=np.float64,
        )
        density = params["density"] if self.search_density else self.default_density
        return Candidate(self.weights_of(x), density)

    def weights_of(self, x: np.ndarray) -> np.ndarray:
        """Map free variables ``(G, K)`` to weights ``(G, K)``."""
        x = np.asarray(x, dtype=np.float64)
        if self.parameterization != "simplex":
            return x.copy()
        x = np.clip(x, 0.0, None)
        sums = x.sum(axis=1, keepdims=True)
        uniform = np.full_like(x, 1.0 / self.n_checkpoints)
        return np.where(sums > 0, x / np.where(sums > 0, sums, 1.0), uniform)

    def weight_attrs(self, weights: np.ndarray) -> dict[str, float]:
        """The merge weights of a ``(G, K)`` candidate as numeric trial attributes, one per
        parameter (``weight:w003``, ``weight:layers.0-3/w003``), to sort and plot them by."""
        return {
            f"weight:{self.param_name(g, k)}": float(weights[g, k])
            for g in range(weights.shape[0])
            for k in range(weights.shape[1])
        }

    def params_for(
        self, weights: np.ndarray | Sequence[float], density: float | None = None
    ) -> dict[str, float]:
        """Parameters that map to ``weights`` (one row for every group, or ``(G, K)``).

        Raises:
            SearchError: The weights are outside the space (negative or not summing to 1
                for ``simplex``, out of range otherwise).
        """
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim == 1:
            w = np.tile(w, (len(self.groups), 1))
        if w.shape != (len(self.groups), self.n_checkpoints):
            raise SearchError(
                f"weights of shape {w.shape} do not fit the space ({len(self.groups)}, {self.n_checkpoints})"
            )
        if self.parameterization == "simplex":
            if (w < 0).any() or not np.allclose(w.sum(axis=1), 1.0):
                raise SearchError(f"weights {w.tolist()} are not on the simplex (>= 0, summing to 1)")
            x = w / w.max(axis=1, keepdims=True)
        else:
            low, high = self.bounds
            if (w < low - 1e-12).any() or (w > high + 1e-12).any():
                raise SearchError(
                    f"weights {w.tolist()} are outside [{low}, {high}] of '{self.parameterization}'"
                )
            x = w
        params = {
            self.param_name(g, k): float(x[g, k])
            for g in range(len(self.groups))
            for k in range(self.n_checkpoints)
        }
        if self.search_density:
            params["density"] = float(
                density if density is not None else (self.default_density or DENSITY_RANGE[1])
            )
        return params

    def center(self) -> dict[str, float]:
        """Start point of CMA-ES: the parameters of the uniform soup, in the middle of the box."""
        if self.parameterization == "simplex":
            params = {name: 0.5 for name in self.param_names()}
            if self.search_density:
                params["density"] = float(sum(DENSITY_RANGE) / 2)
            return params
        return self.params_for(np.full(self.n_checkpoints, 1.0 / self.n_checkpoints), None)

    def describe(self) -> dict[str, Any]:
        """JSON summary of the space (stored in the study and in results.json)."""
        return {
            "n_checkpoints": self.n_checkpoints,
            "groups": list(self.groups),
            "weights": self.parameterization,
            "search_density": self.search_density,
            "default_density": self.default_density,
        }
