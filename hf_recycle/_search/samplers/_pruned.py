"""Samplers that learn from raced-out trials.

Racing (``search.racing``) stops a sampled trial once it is clearly worse than the best complete
one; the trial ends PRUNED, after reporting its mean on each prefix it scored. Optuna's GP
sampler models COMPLETE trials only: when every new trial is raced out its posterior never
changes and it proposes the same point again and again (on the demo pool, all 24 optimized trials
of a 40-trial search were the same raced-out merge). Here a raced-out trial is an observation
valued at its last reported mean: an unbiased estimate of its score, from fewer examples, and
clearly below the best, which is what racing established. CMA-ES gets the same from Optuna's own
``consider_pruned_trials``; TPE ranks pruned trials by their reports already.

This module imports optuna; the registry (``__init__``) never imports it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Container
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState


def pruned_as_complete(trial: FrozenTrial) -> FrozenTrial | None:
    """A PRUNED trial as a COMPLETE observation valued at its last report (None: it reported nothing)."""
    if not trial.intermediate_values:
        return None
    value = trial.intermediate_values[max(trial.intermediate_values)]
    if value is None or not math.isfinite(value):
        return None
    seen = copy.copy(trial)
    seen.state = TrialState.COMPLETE
    seen.values = [float(value)]
    return seen


class _StudyWithPruned:
    """``study`` whose COMPLETE trials also list its reporting PRUNED trials (:func:`pruned_as_complete`)."""

    def __init__(self, study: optuna.Study) -> None:
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None, use_cache: bool = False
    ) -> list[FrozenTrial]:
        trials = self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        if states is None or TrialState.COMPLETE not in states:
            return trials
        pruned = self._study._get_trials(deepcopy=False, states=(TrialState.PRUNED,), use_cache=use_cache)
        seen = [s for s in map(pruned_as_complete, pruned) if s is not None]
        return sorted([*trials, *seen], key=lambda t: t.number)


class PrunedAwareGPSampler(optuna.samplers.GPSampler):
    """Optuna's GP sampler that models raced-out trials at their last reported mean."""

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]
    ) -> dict[str, Any]:
        return super().sample_relative(_StudyWithPruned(study), trial, search_space)  # type: ignore[arg-type]
