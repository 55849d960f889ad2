"""Baselines enqueued twice (two workers starting together) run once; the budget ignores the copies."""

from __future__ import annotations

import numpy as np
import optuna
from optuna.trial import TrialState
from synthetic import ScoreResult, WeightsModel

from hf_recycle._search.baselines import single_weights, uniform_weights
from hf_recycle._search.objective import TrialObjective
from hf_recycle._search.space import SearchSpace
from hf_recycle._search.study import (
    DUPLICATE_ATTR,
    StudyConfig,
    create_or_load_study,
    enqueue_initial_baselines,
    finished_count,
)
from hf_recycle._search.worker import run_worker

TARGET = np.array([0.6, 0.3, 0.1])


class _Closeness:
    name = "closeness"
    weight = 1.0
    higher_is_better = True
    num_examples = 1

    def __init__(self):
        self.calls = 0

    def score(self, model, limit=None, *, resume=None):
        self.calls += 1
        value = -float(np.sum((model - TARGET) ** 2))
        return ScoreResult(value, (value,))


def _study(baselines=("uniform", "best_single")):
    space = SearchSpace(3)
    config = StudyConfig(
        space=space, checkpoints=["a", "b", "c"], tasks=["closeness"], directions=[True], baselines=baselines
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = create_or_load_study(
        optuna.storages.InMemoryStorage(), "s", config, sampler=optuna.samplers.RandomSampler(seed=0)
    )
    return study, config, space


def test_a_baseline_enqueued_twice_runs_once_and_is_not_counted_twice():
    study, config, space = _study()
    enqueue_initial_baselines(study, config)
    # What a second worker that read "not enqueued yet" at the same time adds:
    study.enqueue_trial(space.params_for(uniform_weights(3)), user_attrs={"baseline": "uniform"})
    study.enqueue_trial(
        space.params_for(single_weights(1, 3)), user_attrs={"baseline": "single", "checkpoint": 1}
    )
    scorer = _Closeness()
    run_worker(study, config, TrialObjective(space, WeightsModel(), [scorer]), trials=7)

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    copies = [t for t in trials if DUPLICATE_ATTR in t.user_attrs]
    assert len(complete) == 7 == finished_count(trials)  # the copies take nothing from the budget
    assert scorer.calls == 7  # and were never scored
    assert [(t.number, t.state, t.user_attrs[DUPLICATE_ATTR]) for t in copies] == [
        (4, TrialState.PRUNED, 0),
        (5, TrialState.PRUNED, 2),
    ]
    ran = sorted(
        (t.user_attrs["baseline"], t.user_attrs.get("checkpoint", -1))
        for t in complete
        if "baseline" in t.user_attrs
    )
    assert ran == [("single", 0), ("single", 1), ("single", 2), ("uniform", -1)]
    single1 = next(t for t in complete if t.user_attrs.get("checkpoint") == 1)
    assert single1.value == -float(np.sum((single_weights(1, 3) - TARGET) ** 2))


def test_a_baseline_whose_first_trial_failed_runs_again():
    study, config, space = _study(baselines=("uniform",))
    failed = optuna.trial.create_trial(
        params=space.params_for(uniform_weights(3)),
        distributions=space.distributions(),
        user_attrs={"baseline": "uniform"},
        state=TrialState.FAIL,
    )
    study.add_trial(failed)
    study.enqueue_trial(space.params_for(uniform_weights(3)), user_attrs={"baseline": "uniform"})
    run_worker(study, config, TrialObjective(space, WeightsModel(), [_Closeness()]), trials=1)
    done = study.trials[1]
    assert done.state == TrialState.COMPLETE and DUPLICATE_ATTR not in done.user_attrs
    assert done.user_attrs["baseline"] == "uniform"
