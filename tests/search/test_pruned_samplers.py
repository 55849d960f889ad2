"""Raced-out (PRUNED) trials teach the model-based samplers: GP and CMA-ES see them at their last report."""

from __future__ import annotations

import optuna
import pytest

from hf_recycle._search.samplers import make_sampler
from hf_recycle._search.samplers._pruned import pruned_as_complete
from hf_recycle._search.space import SearchSpace


def _raced_study(sampler, complete=6, raced=10):
    """``complete`` trials of a smooth objective, then ``raced`` trials that report it and are pruned."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=sampler)

    def value(trial):
        x, y = trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1)
        return -((x - 0.3) ** 2) - (y - 0.7) ** 2

    study.optimize(value, n_trials=complete)

    def raced_out(trial):
        trial.report(value(trial) - 0.5, step=0)  # a prefix's mean, clearly below the best
        raise optuna.TrialPruned("raced out")

    study.optimize(raced_out, n_trials=raced)
    return study


def _proposals(study):
    return [tuple(t.params.values()) for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]


def test_gp_moves_on_after_raced_out_trials_where_optunas_gp_repeats_itself():
    plain = _proposals(_raced_study(optuna.samplers.GPSampler(seed=0, n_startup_trials=5)))
    assert len(set(plain)) <= 2  # it never learns that the point was raced out
    ours = _proposals(_raced_study(make_sampler("gp", SearchSpace(3), seed=0, n_objectives=1, trials=16)))
    assert len(set(ours)) == len(ours) == 10


def test_cmaes_generations_advance_on_raced_out_trials():
    sampler = make_sampler("cmaes", SearchSpace(3), seed=0, n_objectives=1, trials=30)
    study = _raced_study(sampler, complete=6, raced=20)
    key = sampler._attr_key_generation
    generations = [t.system_attrs[key] for t in study.trials if key in t.system_attrs]
    # popsize 6 (2 parameters): the raced-out trials make up generations; Optuna's default waits for
    # 6 COMPLETE ones and draws every trial from generation 0
    assert max(generations) >= 2


def test_a_pruned_trial_without_a_report_is_not_an_observation():
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"x": 0.5})

    def pruned(reports):
        def objective(trial):
            trial.suggest_float("x", 0, 1)
            for step, value in enumerate(reports):
                trial.report(value, step)
            raise optuna.TrialPruned()

        return objective

    study.optimize(pruned([]), 1)  # a twin baseline: pruned before scoring anything
    assert pruned_as_complete(study.trials[0]) is None
    study.optimize(pruned([0.25, 0.5]), 1)
    seen = pruned_as_complete(study.trials[1])
    assert seen.state == optuna.trial.TrialState.COMPLETE and seen.value == pytest.approx(0.5)
    assert study.trials[1].state == optuna.trial.TrialState.PRUNED  # the study's own record is untouched
