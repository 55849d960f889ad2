"""Screening (``search.screen``): sampled trials leave out a checkpoint that scores far below the best alone."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from synthetic import ScoreResult, WeightsModel

from hf_recycle._search.objective import TrialObjective
from hf_recycle._search.screening import (
    SCREENED_ATTR,
    mask_weights,
    poisons_greedy_soup,
    screen_out,
    screen_ratio,
    screened_record,
    screened_text,
)
from hf_recycle._search.space import SearchSpace
from hf_recycle._search.study import StudyConfig, create_or_load_study
from hf_recycle._search.worker import run_worker
from hf_recycle.errors import RecipeError
from hf_recycle.recipe import Recipe

UP = {"a": True, "b": True}


def test_a_checkpoint_far_below_the_best_on_every_task_is_out_a_specialist_is_not():
    scores = [
        {"a": 0.9, "b": 0.1},  # good at a only: kept
        {"a": 0.2, "b": 0.8},  # good at b only: kept
        {"a": 0.0, "b": 0.0},  # diverged: out
        {"a": 0.44, "b": 0.39},  # just below half of the best on both (0.45 and 0.4): out
        {"a": 0.46, "b": 0.3},  # below half on b only: kept
    ]
    assert screen_out(scores, UP, 0.5) == (2, 3)
    assert screen_out(scores, UP, 0.2) == (2,)
    # a loss (lower is better): out when above best / ratio on every task
    losses = [{"a": 1.0, "b": 0.9}, {"a": 2.5, "b": 1.9}, {"a": 2.1, "b": 1.7}]
    assert screen_out(losses, {"a": False, "b": False}, 0.5) == (1,)
    # a task whose best score is not positive (a loglikelihood) does not vote; the others decide
    assert screen_out([{"a": -1.0}, {"a": -9.0}], {"a": True}, 0.5) == ()
    assert screen_out([{"a": 0.0, "b": 0.5}, {"a": 0.0, "b": 0.1}], UP, 0.5) == (1,)
    assert screen_out([{"a": -1.0, "b": 0.5}, {"a": -9.0, "b": 0.1}], UP, 0.5) == (1,)
    assert screen_out([{"a": -1.0, "b": 0.5}, {"a": -9.0, "b": 0.4}], UP, 0.5) == ()


def test_a_checkpoint_poisons_when_its_greedy_step_collapses_the_soup():
    singles = [0.8, 0.3, 0.0, 0.1]  # greedy order: 0, 1, 3, 2
    f = frozenset
    soups = {f({0, 1}): 0.85, f({0, 1, 3}): 0.5, f({0, 1, 2}): 0.1}
    # 1 joins the soup (0.85); 3 lowers it but not below half; 2 collapses it
    assert poisons_greedy_soup(singles, soups, 0.5) == {2}
    assert poisons_greedy_soup(singles, {f({0, 1}): 0.85}, 0.5) is None  # the greedy soup goes on
    # a negative mean (a loglikelihood): the step poisons when it drops below the mean / ratio
    assert poisons_greedy_soup([-0.2, -0.5], {f({0, 1}): -3.0}, 0.5) == {1}
    assert poisons_greedy_soup([-0.2, -0.5], {f({0, 1}): -0.3}, 0.5) == set()
    assert poisons_greedy_soup([0.0, -0.5], {f({0, 1}): -3.0}, 0.5) == set()  # a zero mean says nothing


def test_masked_weights_renormalize_a_simplex_row_and_only_zero_other_spaces():
    w = np.array([[0.2, 0.3, 0.5], [0.0, 0.0, 1.0]])
    got = mask_weights(w, (2,), "simplex")
    np.testing.assert_allclose(
        got, [[0.4, 0.6, 0.0], [0.5, 0.5, 0.0]]
    )  # all on the out one: uniform over the rest
    np.testing.assert_allclose(mask_weights(w, (2,), "nonnegative"), [[0.2, 0.3, 0.0], [0.0, 0.0, 0.0]])
    assert mask_weights(w, (), "simplex") is w


class _Poisoned:
    """Example i of merge w scores ``table[i] · w``, and 0 when the last checkpoint (diverged: 2) gets > 1% weight."""

    name, weight, higher_is_better, num_examples = "task", 1.0, True, 20
    table = np.random.default_rng(0).random((20, 3)) * np.array([0.9, 0.7, 0.0])

    def score(self, model, limit=None, *, resume=None):
        w = np.ravel(model)
        per = tuple(float(x) for x in (self.table @ w if w[-1] <= 0.01 else np.zeros(20)))
        return ScoreResult(float(np.mean(per)), per)


class _PoisonedPair(_Poisoned):
    """Two checkpoints: 0 healthy, 1 diverged (0 alone; any merge with > 1% of it scores 0)."""

    table = np.random.default_rng(0).random((20, 2)) * np.array([0.9, 0.0])


def _study(screen, scorer=None):
    scorer = scorer or _Poisoned()
    k = scorer.table.shape[1]
    space = SearchSpace(k)
    config = StudyConfig(
        space=space,
        checkpoints=list("abc"[:k]),
        tasks=["task"],
        directions=[True],
        baselines=("uniform", "best_single", "greedy_soup"),
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = create_or_load_study(
        optuna.storages.InMemoryStorage(), "s", config, sampler=optuna.samplers.RandomSampler(0)
    )
    model = WeightsModel()
    written = []
    set_weights = model.set_weights
    model.set_weights = lambda w, d=None: (written.append(np.array(w)), set_weights(w, d))
    run_worker(study, config, TrialObjective(space, model, [scorer], screen=screen), trials=16)
    return study, written


def test_sampled_trials_give_no_weight_to_a_diverged_checkpoint_the_baselines_still_do():
    study, written = _study(screen=0.5)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    baselines = [t for t in trials if "baseline" in t.user_attrs]
    sampled = [t for t in trials if "baseline" not in t.user_attrs]
    assert len(baselines) == 6 and len(sampled) == 10  # uniform, 3 singles, 2 greedy steps
    assert [t.user_attrs["weights"][0][2] for t in baselines if t.user_attrs["baseline"] == "uniform"] == [
        pytest.approx(1 / 3)
    ]
    for t, w in zip(trials, written, strict=True):  # the weights recorded are the weights merged
        np.testing.assert_allclose(t.user_attrs["weights"], w)
    for t in sampled:
        assert t.user_attrs[SCREENED_ATTR] == [2]
        assert t.user_attrs["weights"][0][2] == 0.0 and sum(t.user_attrs["weights"][0]) == pytest.approx(1.0)
        assert t.value > 0  # never in the poisoned region
    # without screening, random sampling lands in it
    unscreened, _ = _study(screen=None)
    sampled = [
        t for t in unscreened.get_trials(states=(TrialState.COMPLETE,)) if "baseline" not in t.user_attrs
    ]
    assert all(SCREENED_ATTR not in t.user_attrs for t in sampled)
    assert sum(t.value == 0 for t in sampled) >= 5

    # results.json's record and the summary's line name the checkpoint and its scores alone
    pins = [SimpleNamespace(spec=s) for s in ("org/run@a", "org/run@b", "org/run@c")]
    record = screened_record(trials, pins, 0.5)
    assert record == {
        "ratio": 0.5,
        "checkpoints": [{"index": 2, "spec": "org/run@c", "search": {"task": 0.0}}],
    }
    assert "org/run@c" in screened_text({"screened": record})
    assert screened_record(unscreened.get_trials(), pins, 0.5) is None


def test_two_checkpoints_one_diverged_leaves_one_and_warns(caplog):
    # with two checkpoints the uniform soup is the greedy soup's only step: it collapsed
    with caplog.at_level("WARNING", logger="hf_recycle._search.screening"):
        study, _ = _study(screen=0.5, scorer=_PoisonedPair())
    sampled = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if "baseline" not in t.user_attrs]
    assert sampled and all(t.user_attrs[SCREENED_ATTR] == [1] for t in sampled)
    assert all(t.user_attrs["weights"][0] == [1.0, 0.0] for t in sampled)
    assert "leaves one of 2 checkpoints" in caplog.text and "search.screen: false" in caplog.text


def test_search_screen_setting(tmp_path):
    text = "name: r\ncheckpoints: [./a, ./b]\nsearch:\n{}tasks:\n  - {{name: t, data: json, prompt: q, target: a}}\n"
    assert Recipe.from_text(text.format("  trials: 5\n"), "r.yaml").search.screen == 0.5
    assert Recipe.from_text(text.format("  screen: false\n"), "r.yaml").search.screen is False
    assert Recipe.from_text(text.format("  screen: 0.25\n"), "r.yaml").search.screen == 0.25
    with pytest.raises(
        RecipeError, match=r"r.yaml:4: search.screen: .*between 0 and 1 \(e.g. 0.5\), or false"
    ):
        Recipe.from_text(text.format("  screen: 2\n"), "r.yaml")
    # screening is on with the greedy soup baseline only (its steps are the second sign)
    assert screen_ratio(Recipe.from_text(text.format("  screen: 0.25\n"), "r.yaml").search) == 0.25
    assert screen_ratio(Recipe.from_text(text.format("  screen: false\n"), "r.yaml").search) is None
    no_greedy = "  baselines: [uniform, best_single]\n"
    assert screen_ratio(Recipe.from_text(text.format(no_greedy), "r.yaml").search) is None
