"""The search space: Optuna parameters <-> merge weights.

A candidate is a ``(G, K)`` matrix of weights, one row per *group* of tensors and one
column per checkpoint (``G == 1`` for ``granularity: model``), plus an optional
density for ties/dare. Groups for ``granularity: layers:N`` are the embeddings, each
block of N transformer layers, and the head (final norm, ``lm_head``), in model order.

Parameterizations of one row of weights (``K`` checkpoints):

- ``simplex`` (the default; the paper's weights: ``w_i >= 0``, ``sum(w) == 1``) by stick-breaking
  over ``K - 1`` variables ``s_i`` in ``[0, 1]`` (``s003``): checkpoint ``i`` takes the share
  ``v_i = 1 - s_i^(1 / (K - 1 - i))`` of what the checkpoints before it left (``v_i`` is the
  Beta(1, K - 1 - i) quantile of ``1 - s_i``), ``w_i = v_i * prod_{j<i} (1 - v_j)``, and the last
  checkpoint takes the rest. A uniform ``s`` is a uniform point of the simplex; every point is
  reachable, corners and soups exactly (:meth:`SearchSpace.params_for`; a single checkpoint ``i``
  is ``s_i = 0`` with every ``s`` before it at 1); inside the simplex no direction of ``s``
  leaves the weights unchanged.
- ``simplex_box``: the same weights as ``w = x / sum(x)`` over ``K`` variables ``x_i`` in
  ``[0, 1]`` (``x == 0`` maps to the uniform soup; ``w`` is produced by ``x = w / max(w)``). Every
  ``c * x`` is the same merge: samplers spend trials along that direction, and a sampled ``x``
  is mostly near the uniform soup (``benchmarks/RESULTS.md``, issue 17).
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

PARAMETERIZATIONS = ("simplex", "simplex_box", "nonnegative", "signed")
#: The parameterizations whose weights are on the simplex (a linear merge of them normalizes).
SIMPLEX_PARAMETERIZATIONS = ("simplex", "simplex_box")
#: Weights this close to each other are equal, and this close to 0 are 0, when a row is a soup.
_SOUP_TOLERANCE = 1e-12
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
        parameterization: ``simplex``, ``simplex_box``, ``nonnegative`` or ``signed``.
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

    @property
    def n_variables(self) -> int:
        """Variables per group: ``K - 1`` for ``simplex``, ``K`` for the others."""
        return self.n_checkpoints - 1 if self.parameterization == "simplex" else self.n_checkpoints

    def weight_name(self, group: int, checkpoint: int) -> str:
        """Name of the weight of ``checkpoint`` in ``group`` (``w003``, ``layers.0-3/w003``)."""
        prefix = "" if len(self.groups) == 1 else f"{self.groups[group]}/"
        return f"{prefix}w{checkpoint:03d}"

    def param_name(self, group: int, index: int) -> str:
        """Optuna name of variable ``index`` of ``group``: the weight's name (``w003``), or for
        ``simplex`` the stick fraction of checkpoint ``index`` (``s003``, ``layers.0-3/s003``)."""
        name = self.weight_name(group, index)
        return name[:-4] + "s" + name[-3:] if self.parameterization == "simplex" else name

    def param_names(self) -> list[str]:
        """Every parameter name, groups outer, variables inner, then ``density``."""
        names = [self.param_name(g, i) for g in range(len(self.groups)) for i in range(self.n_variables)]
        return [*names, "density"] if self.search_density else names

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """Optuna distributions of every parameter."""
        from optuna.distributions import FloatDistribution

        low, high = self.bounds
        dists: dict[str, Any] = {
            self.param_name(g, i): FloatDistribution(low, high)
            for g in range(len(self.groups))
            for i in range(self.n_variables)
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
                [params[self.param_name(g, i)] for i in range(self.n_variables)]
                for g in range(len(self.groups))
            ],
            dtype=np.float64,
        )
        density = params["density"] if self.search_density else self.default_density
        return Candidate(self.weights_of(x), density)

    def weights_of(self, x: np.ndarray) -> np.ndarray:
        """Map free variables ``(G, n_variables)`` to weights ``(G, K)``."""
        x = np.asarray(x, dtype=np.float64)
        if self.parameterization == "simplex":
            return _stick_breaking(x)
        if self.parameterization != "simplex_box":
            return x.copy()
        x = np.clip(x, 0.0, None)
        sums = x.sum(axis=1, keepdims=True)
        uniform = np.full_like(x, 1.0 / self.n_checkpoints)
        return np.where(sums > 0, x / np.where(sums > 0, sums, 1.0), uniform)

    def weight_attrs(self, weights: np.ndarray) -> dict[str, float]:
        """The merge weights of a ``(G, K)`` candidate as numeric trial attributes, one per
        parameter (``weight:w003``, ``weight:layers.0-3/w003``), to sort and plot them by."""
        return {
            f"weight:{self.weight_name(g, k)}": float(weights[g, k])
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
        if self.parameterization in SIMPLEX_PARAMETERIZATIONS:
            if (w < 0).any() or not np.allclose(w.sum(axis=1), 1.0):
                raise SearchError(f"weights {w.tolist()} are not on the simplex (>= 0, summing to 1)")
            x = (
                _stick_fractions(w)
                if self.parameterization == "simplex"
                else w / w.max(axis=1, keepdims=True)
            )
        else:
            low, high = self.bounds
            if (w < low - 1e-12).any() or (w > high + 1e-12).any():
                raise SearchError(
                    f"weights {w.tolist()} are outside [{low}, {high}] of '{self.parameterization}'"
                )
            x = w
        params = {
            self.param_name(g, i): float(x[g, i])
            for g in range(len(self.groups))
            for i in range(self.n_variables)
        }
        if self.search_density:
            params["density"] = float(
                density if density is not None else (self.default_density or DENSITY_RANGE[1])
            )
        return params

    def describe(self) -> dict[str, Any]:
        """JSON summary of the space (stored in the study and in results.json).

        ``simplex`` adds ``"variables": "stick_breaking"``: a study made when ``simplex`` was
        today's ``simplex_box`` (K variables per group) is refused on resume instead of mixing
        the two sets of parameters.
        """
        described: dict[str, Any] = {
            "n_checkpoints": self.n_checkpoints,
            "groups": list(self.groups),
            "weights": self.parameterization,
        }
        if self.parameterization == "simplex":
            described["variables"] = "stick_breaking"
        described.update(search_density=self.search_density, default_density=self.default_density)
        return described


def _stick_breaking(s: np.ndarray) -> np.ndarray:
    """Weights ``(G, K)`` of stick variables ``s`` ``(G, K - 1)`` in ``[0, 1]`` (module docstring)."""
    s = np.clip(s, 0.0, 1.0)
    n_rows, n_sticks = s.shape
    pieces = n_sticks - np.arange(n_sticks)  # the Beta(1, b) of checkpoint i: b = K - 1 - i
    with np.errstate(divide="ignore"):  # s == 0: v == 1, the checkpoint takes all that is left
        v = -np.expm1(np.log(s) / pieces)  # 1 - s^(1/b), exact near 0 and 1
    w = np.empty((n_rows, n_sticks + 1))
    rest = np.ones(n_rows)
    for i in range(n_sticks):
        w[:, i] = rest * v[:, i]
        rest = rest - w[:, i]
    w[:, -1] = np.clip(rest, 0.0, None)
    return _exact_soups(w)


def _exact_soups(w: np.ndarray) -> np.ndarray:
    """``w`` with each row whose non-zero weights agree to rounding set to exactly ``1 / m``."""
    out = w.copy()
    for row in out:
        members = row > _SOUP_TOLERANCE
        if np.ptp(row[members]) < _SOUP_TOLERANCE:
            row[:] = np.where(members, 1.0 / members.sum(), 0.0)
    return out


def _stick_fractions(w: np.ndarray) -> np.ndarray:
    """Stick variables ``(G, K - 1)`` of simplex weights ``(G, K)``: the inverse of :func:`_stick_breaking`."""
    n_sticks = w.shape[1] - 1
    rest = np.cumsum(w[:, ::-1], axis=1)[:, ::-1][:, :n_sticks]  # what is left for checkpoints i, i+1, ...
    v = np.clip(np.where(rest > 0, w[:, :n_sticks] / np.where(rest > 0, rest, 1.0), 0.0), 0.0, 1.0)
    pieces = n_sticks - np.arange(n_sticks)
    with np.errstate(divide="ignore"):
        return np.exp(pieces * np.log1p(-v))  # (1 - v)^b
