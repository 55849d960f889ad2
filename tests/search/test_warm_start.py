"""Samplers start from what the baselines found (issue 17).

The baselines run first as enqueued trials; CMA-ES starts its first generation at the best of
them with a step that reaches every corner of the simplex, and TPE and GP take them as
observations. Every study here runs the real worker loop (baselines, greedy soup, sampled
trials) on an objective computed from the merge weights alone, so no model is built.
"""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from hf_recycle._search.samplers import make_sampler
from hf_recycle._search.samplers._start import START_ATTR, START_SIGMA0, BaselineStartCmaEsSampler
from hf_recycle._search.space import SearchSpace
from hf_recycle._search.study import StudyConfig, create_or_load_study
from hf_recycle._search.worker import run_worker

K = 4
POPSIZE = 4 + int(3 * np.log(SearchSpace(K).n_variables))  # CMA-ES's default population: 7


def _config(k: int = K) -> StudyConfig:
    return StudyConfig(
        space=SearchSpace(k), checkpoints=[f"c{i}" for i in range(k)], tasks=["t"], directions=[True]
    )


class _WeightsObjective:
    """Scores a trial's merge weights with ``value(w)``, as the search's objective records them."""

    def __init__(self, space: SearchSpace, value) -> None:
        self.space = space
        self.value = value

    def __call__(self, trial: optuna.Trial) -> float:
        weights = self.space.suggest(trial).weights
        value = float(self.value(weights[0]))
        trial.set_user_attr("weights", weights.tolist())
        trial.set_user_attr("mean", value)  # greedy soup reads the soups' scores here
        return value


def _linear(best: int, k: int = K):
    """Checkpoint ``best`` scores 1, the others 0.2: the best baseline is the single ``best``."""
    quality = np.full(k, 0.2)
    quality[best] = 1.0
    return lambda w: quality @ w


def _run(sampler, value, trials: int, storage=None, config: StudyConfig | None = None) -> optuna.Study:
    config = config or _config()
    study = create_or_load_study(storage or optuna.storages.InMemoryStorage(), "s", config, sampler=sampler)
    run_worker(study, config, _WeightsObjective(config.space, value), trials)
    return study


def _sampled(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if "baseline" not in t.user_attrs]


def _first_generation_mean(study: optuna.Study) -> np.ndarray:
    gen0 = [t for t in _sampled(study) if t.system_attrs.get("cma:generation") == 0]
    assert len(gen0) == POPSIZE
    return np.mean([t.user_attrs["weights"][0] for t in gen0], axis=0)


def test_cmaes_first_generation_is_centred_on_the_best_baseline(monkeypatch):
    """The first generation is drawn around the best single checkpoint's corner, and the same
    check fails for Optuna's CmaEsSampler (centre of the box, the uniform soup)."""
    import cmaes

    inits = []

    def recording_cma(**kwargs):
        inits.append(kwargs)
        return cmaes.CMA(**kwargs)

    monkeypatch.setattr(
        optuna.samplers._cmaes, "cmaes", type("M", (), {"CMA": recording_cma, "CMAwM": cmaes.CMAwM})
    )
    baselines = _config().baseline_trials()  # 1 + 4 + 3: uniform, singles, greedy soup's steps
    space = _config().space
    for best in (1, 3):
        inits.clear()
        sampler = make_sampler("cmaes", space, seed=0, n_objectives=1, trials=0)
        study = _run(sampler, _linear(best), baselines + POPSIZE)
        assert len(_sampled(study)) == POPSIZE
        mean = _first_generation_mean(study)
        assert mean[best] > 0.6 and mean.argmax() == best, mean  # the centre is 0.25 each
        corner = np.asarray(list(space.params_for(np.eye(K)[best]).values()))
        low, high = space.bounds
        for init in inits:  # Optuna built CMA-ES at that corner (normalized to [0, 1])
            np.testing.assert_allclose(init["mean"], (corner - low) / (high - low))
            assert init["sigma"] == START_SIGMA0
        assert len(inits) == POPSIZE  # the first generation: one fresh optimizer per sample

    plain = _run(optuna.samplers.CmaEsSampler(seed=0), _linear(3), baselines + POPSIZE)
    mean = _first_generation_mean(plain)
    assert mean[3] < 0.35, mean  # without the start: around the uniform soup
    np.testing.assert_allclose(inits[-1]["mean"], 0.5)
    assert inits[-1]["sigma"] == pytest.approx(1 / 6)


def test_cmaes_start_holds_across_workers_resume_and_better_sampled_trials(tmp_path):
    """Workers taking turns on one SQLite study, each a new sampler with its own seed (as another
    process or a resumed search), draw the whole first generation around one start, the best
    baseline, chosen once, although sampled trials beat it meanwhile; the second generation
    comes from CMA-ES's state stored in the study."""
    target = np.array([0.7, 0.1, 0.1, 0.1])  # near the corner of checkpoint 0, inside the simplex
    value = lambda w: -float(np.sum((w - target) ** 2))  # noqa: E731
    url = f"sqlite:///{tmp_path / 'study.db'}"
    config = _config()
    baselines = config.baseline_trials()
    for total in range(baselines + 2, baselines + POPSIZE + 4, 2):  # two more trials per turn
        sampler = BaselineStartCmaEsSampler(seed=total, warn_independent_sampling=False)
        study = _run(sampler, value, total, storage=optuna.storages.RDBStorage(url), config=config)
    trials = study.get_trials(deepcopy=False)
    base = [t for t in trials if "baseline" in t.user_attrs]
    best = max(base, key=lambda t: t.value)
    assert best.user_attrs["baseline"] == "single" and best.user_attrs["checkpoint"] == 0
    sampled = _sampled(study)
    gen0 = [t for t in sampled if t.system_attrs["cma:generation"] == 0]
    assert len(gen0) == POPSIZE and all(t.state == TrialState.COMPLETE for t in sampled)
    assert max(t.value for t in gen0) > best.value  # sampled trials beat the start ...
    starts = [t.system_attrs[START_ATTR] for t in trials if START_ATTR in t.system_attrs]
    assert starts == [best.params]  # ... and it stayed put: chosen once, by the first sample
    assert {t.system_attrs["cma:generation"] for t in sampled} == {0, 1}
    assert any(key.startswith("cma:optimizer") for t in sampled for key in t.system_attrs)


@pytest.mark.parametrize("name", ["tpe", "gp", "random"])
def test_tpe_and_gp_sampled_trials_follow_the_baselines_values(name):
    """The baselines count as TPE's and GP's observations: their first sampled trials (same seed)
    change with which single checkpoint scored best, and GP's first one gives that checkpoint the
    largest weight. A sampler blind to the baselines (startup samples, or the random sampler, as
    shown) proposes the same trials whichever checkpoint is best."""
    config = _config()
    first = []
    for best in range(K):
        sampler = make_sampler(name, config.space, seed=0, n_objectives=1, trials=0)
        study = _run(sampler, _linear(best), config.baseline_trials() + 3, config=config)
        first.append([t.user_attrs["weights"][0] for t in _sampled(study)])
    distinct = len({str(trials) for trials in first})
    if name == "random":
        assert distinct == 1
        return
    assert distinct == K
    if name == "gp":
        assert [int(np.argmax(trials[0])) for trials in first] == list(range(K))
