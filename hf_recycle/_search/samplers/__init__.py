"""Samplers: each is one module of this package holding one :class:`SamplerAdapter` subclass.

The registry (:data:`SAMPLERS`) finds them without importing optuna: the recipe schema,
the preflight checks and the model card read the adapters' class attributes; optuna is
imported when a search builds the sampler. Adding a sampler is adding one module (and
its test).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, ClassVar

from hf_recycle.errors import MissingDependencyError, SearchError

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from hf_recycle._search.space import SearchSpace


class SamplerAdapter:
    """How hf-recycle builds one Optuna sampler.

    Attributes:
        name: The recipe's ``search.sampler`` value.
        pretty_name: How the model card names it.
        multi_objective: Whether it can run an ``objective: pareto`` study.
        requires: Python packages it needs beyond optuna (checked before it is built).
        order: Where it is listed.
    """

    name: ClassVar[str]
    pretty_name: ClassVar[str]
    multi_objective: ClassVar[bool] = True
    requires: ClassVar[tuple[str, ...]] = ()
    order: ClassVar[int] = 100

    def build(
        self, space: SearchSpace, *, seed: int, n_objectives: int, trials: int
    ) -> optuna.samplers.BaseSampler:
        """The Optuna sampler for a study of ``trials`` trials over ``space``."""
        raise NotImplementedError


def _discover() -> dict[str, SamplerAdapter]:
    from hf_recycle.plugins import discover

    return {cls.name: cls() for cls in discover(__name__, SamplerAdapter)}


#: Registry: ``search.sampler`` name -> adapter, in listing order.
SAMPLERS: dict[str, SamplerAdapter] = _discover()
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)
#: Samplers that optimize one objective only (Optuna's CmaEsSampler refuses a multi-objective study).
SINGLE_OBJECTIVE_SAMPLERS: tuple[str, ...] = tuple(n for n, s in SAMPLERS.items() if not s.multi_objective)


def make_sampler(
    name: str, space: SearchSpace, *, seed: int, n_objectives: int, trials: int
) -> optuna.samplers.BaseSampler:
    """The Optuna sampler called ``name``.

    Raises:
        MissingDependencyError: A package it needs is missing (``cmaes`` for cmaes, ``scipy`` for gp).
        SearchError: Unknown name, or a single-objective sampler for a Pareto search.
    """
    import warnings

    import optuna

    adapter = SAMPLERS.get(name)
    if adapter is None:
        raise SearchError(f"unknown sampler '{name}': use one of {', '.join(SAMPLERS)}")
    if n_objectives > 1 and not adapter.multi_objective:
        multi = ", ".join(n for n, s in SAMPLERS.items() if s.multi_objective)
        raise SearchError(
            f"sampler '{name}' optimizes a single objective; objective 'pareto' needs sampler {multi}"
        )
    for package in adapter.requires:
        try:
            importlib.import_module(package)
        except ImportError as exc:
            raise MissingDependencyError(package, f"sampler '{name}'") from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return adapter.build(space, seed=seed, n_objectives=n_objectives, trials=trials)


__all__ = ["SAMPLERS", "SAMPLER_NAMES", "SINGLE_OBJECTIVE_SAMPLERS", "SamplerAdapter", "make_sampler"]
