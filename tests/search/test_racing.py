"""Racing (``search.racing``): a candidate that cannot reach the best trial stops on a prefix."""

from __future__ import annotations

import json
import math
import statistics
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from synthetic import ScoreResult, WeightsModel

from hf_recycle._search.objective import PER_EXAMPLE_ATTR, TrialObjective
from hf_recycle._search.racing import Reference, examples_summary, race, rung_limits
from hf_recycle._search.space import SearchSpace
from hf_recycle._search.study import StudyConfig, create_or_load_study, open_storage
from hf_recycle._search.worker import run_worker
from hf_recycle.errors import RecipeError
from hf_recycle.recipe import RacingSpec, Recipe

Z95 = 1.6448536269514722  # the one-sided 95% normal quantile
Z80 = 0.8416212335729143  # the one-sided 80% one: racing's default confidence


def _task(name, weight=1.0, higher_is_better=True):
    return SimpleNamespace(name=name, weight=weight, higher_is_better=higher_is_better)


# --- the statistic ----------------------------------------------------------------------------


def test_the_bound_is_the_paired_macro_difference_plus_z_standard_errors_with_the_known_part_exact():
    rng = np.random.default_rng(0)
    ref_a, ref_b = rng.random(40), rng.random(10) * 5  # b: lower is better (a loss), 10 examples
    cand_a, cand_b = rng.random(8), rng.random(4) * 5  # prefixes: 8 of 40, 4 of 10
    tasks = [_task("a", 3.0), _task("b", 1.0, higher_is_better=False)]
    got = race({"a": cand_a, "b": cand_b}, Reference(0, 0.0, {"a": ref_a, "b": ref_b}), tasks, 0.95)

    # by hand: weights 3/4 and 1/4, b negated; variance s²/n · (1 − n/N) per task
    da = [c - r for c, r in zip(cand_a, ref_a[:8], strict=False)]
    db = [c - r for c, r in zip(cand_b, ref_b[:4], strict=False)]
    diff = 0.75 * statistics.fmean(da) - 0.25 * statistics.fmean(db)
    var = 0.75**2 * statistics.variance(da) / 8 * (1 - 8 / 40) + 0.25**2 * statistics.variance(db) / 4 * (
        1 - 4 / 10
    )
    assert got.difference == pytest.approx(diff, rel=1e-12)
    assert got.bound == pytest.approx(diff + Z95 * math.sqrt(var), rel=1e-12)
    assert got.examples == 12 and got.out == (got.bound < 0)


def test_clearly_worse_is_out_equal_is_not_and_a_whole_split_is_exact():
    ref = Reference(0, 0.0, {"a": np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0])})
    tasks = [_task("a")]
    worse = race({"a": [0.0, 0.0, 0.0, 1.0]}, ref, tasks, 0.95)
    assert worse.out and worse.difference == pytest.approx(-0.5)
    same = race({"a": [1.0, 0.0, 1.0, 1.0]}, ref, tasks, 0.95)
    assert same.difference == 0 and same.bound == 0 and not same.out
    # one worse example among identical ones is no evidence: not out at 95%
    assert not race({"a": [1.0, 0.0, 1.0, 0.0]}, ref, tasks, 0.95).out
    # the whole split: nothing is estimated, a worse candidate is worse
    full = race({"a": [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0]}, ref, tasks, 0.95)
    assert full.bound == full.difference == pytest.approx(-1 / 8)
    # a prefix longer than the reference's scores does not pair: no decision
    assert race({"a": [0.0] * 9}, ref, tasks, 0.95) is None


def test_rungs_with_too_few_examples_or_nothing_new_are_skipped():
    sizes = {"a": 21, "b": 200}
    assert rung_limits([0.125, 0.25, 0.5], sizes, 10) == [(0.5, {"a": 11, "b": 100})]
    assert rung_limits([0.125, 0.25, 0.5], sizes, 3) == [
        (0.125, {"a": 3, "b": 25}),
        (0.25, {"a": 6, "b": 50}),
        (0.5, {"a": 11, "b": 100}),
    ]
    # a 4-example split never reaches 20 examples; 0.3 and 0.31 of 4 are both 2 examples
    assert rung_limits([0.125, 0.25, 0.5], {"a": 4}, 20) == []
    assert rung_limits([0.3, 0.31, 0.9], {"a": 4}, 2) == [(0.3, {"a": 2})]


def test_examples_summary_counts_every_trial_that_scored():
    trials = [SimpleNamespace(user_attrs=a) for a in ({"examples_scored": 40}, {"examples_scored": 5}, {})]
    assert examples_summary(trials, 40, "racing") == {
        "total": 45,
        "full": 80,
        "trials": 2,
        "method": "racing",
    }


# --- the recipe setting -----------------------------------------------------------------------


def _recipe_text(search: str, tasks: int = 1) -> str:
    rows = "".join(
        f'  - {{name: t{i}, data: json, prompt: "{{q}}", target: "{{a}}"}}\n' for i in range(tasks)
    )
    return f"name: r\ncheckpoints: [./a, ./b]\nsearch:\n{search}tasks:\n{rows}"


def test_racing_is_on_by_default_for_mean_and_off_for_pareto_and_pruning():
    assert Recipe.from_text(_recipe_text("  trials: 5\n"), "r.yaml").search.racing_spec == RacingSpec()
    pareto = Recipe.from_text(_recipe_text("  objective: pareto\n  sampler: tpe\n", tasks=2), "r.yaml")
    assert pareto.search.racing_spec is None
    assert Recipe.from_text(_recipe_text("  pruning: true\n"), "r.yaml").search.racing_spec is None
    assert Recipe.from_text(_recipe_text("  racing: false\n"), "r.yaml").search.racing_spec is None
    custom = Recipe.from_text(
        _recipe_text("  racing: {rungs: [0.25, 0.5, 1.0], confidence: 0.99}\n"), "r.yaml"
    )
    assert custom.search.racing_spec == RacingSpec(rungs=[0.25, 0.5], confidence=0.99)


@pytest.mark.parametrize(
    "search,tasks,message",
    [
        (
            "  racing: true\n  objective: pareto\n  sampler: tpe\n",
            2,
            "search.racing: racing works with objective 'mean' only",
        ),
        ("  racing: {}\n  pruning: true\n", 1, "search.racing: racing and pruning both stop trials early"),
        ("  racing: {rungs: [0.5, 0.25]}\n", 1, "search.racing.rungs: the rungs must increase"),
        ("  racing: {rungs: [0, 0.5]}\n", 1, "search.racing.rungs: each rung is a share of the search split"),
        ("  racing: {rungs: [1.0]}\n", 1, "search.racing.rungs: needs at least one rung below 1"),
        ("  racing: {min_examples: 1}\n", 1, "search.racing.min_examples:"),
        ("  racing: {rung: [0.5]}\n", 1, "search.racing.rung: unknown key"),
    ],
)
def test_bad_racing_settings_are_refused_naming_the_field(search, tasks, message):
    with pytest.raises(RecipeError, match="r.yaml:4: " + message.replace("(", r"\(").replace(")", r"\)")):
        Recipe.from_text(_recipe_text(search, tasks), "r.yaml")


# --- trials racing in a study shared by two workers ------------------------------------------------


class _Mixture:
    """A task of 40 examples; example i of the merge w scores TABLE[i] · w (checkpoint 2 is poor)."""

    name, weight, higher_is_better = "task", 1.0, True
    table = np.random.default_rng(1).random((40, 3)) < np.array([0.8, 0.6, 0.2])
    num_examples = 40

    def __init__(self):
        self.calls = []  # (first example scored, examples in all)

    def score(self, model, limit=None, *, resume=None):
        n = self.num_examples if limit is None else min(limit, self.num_examples)
        done = 0 if resume is None else len(resume.per_example)
        self.calls.append((done, n))
        per = (() if resume is None else resume.per_example) + tuple(
            float(x) for x in self.table[done:n].astype(float) @ np.ravel(model)
        )
        return ScoreResult(float(np.mean(per)), per)


def test_a_worse_candidate_stops_at_the_first_rung_against_another_workers_best_trial(tmp_path):
    space = SearchSpace(3)
    config = StudyConfig(
        space=space,
        checkpoints=["a", "b", "c"],
        tasks=["task"],
        directions=[True],
        baselines=("uniform", "best_single"),
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    racing = RacingSpec(rungs=[0.125, 0.25, 0.5], min_examples=5)

    def worker(trials):  # a worker of its own: its own storage connection, objective and scorer
        study = create_or_load_study(
            open_storage(url, None), "s", config, sampler=optuna.samplers.RandomSampler(0)
        )
        scorer = _Mixture()
        run_worker(
            study, config, TrialObjective(space, WeightsModel(), [scorer], racing=racing), trials=trials
        )
        return study, scorer

    study, first = worker(4)  # the baselines: uniform and each checkpoint alone, never raced
    assert first.calls == [(0, 40)] * 4
    means = [t.value for t in study.get_trials()]
    best = int(np.argmax(means))
    assert means[best] > means[3]  # checkpoint 2 alone is not the best

    study.enqueue_trial(space.params_for([0.0, 0.0, 1.0]))  # sampled-like: no baseline attribute
    study.enqueue_trial(space.params_for(study.trials[best].user_attrs["weights"]))  # as good as the best
    study, second = worker(6)  # another worker: the reference comes from the study
    trials = study.get_trials()
    bad, same = trials[4], trials[5]

    assert bad.state == TrialState.PRUNED and same.state == TrialState.COMPLETE
    assert bad.user_attrs["raced_out_at"] == 0.125 and bad.user_attrs["raced_against"] == best
    assert bad.user_attrs["examples_scored"] == 5
    # the bound by hand: checkpoint 2's first 5 examples against the best trial's, paired
    d = _Mixture.table[:5, 2].astype(float) - np.asarray(
        trials[best].system_attrs[PER_EXAMPLE_ATTR]["task"][:5]
    )
    diff = statistics.fmean(d)
    assert racing.confidence == 0.8
    bound = diff + Z80 * math.sqrt(statistics.variance(d) / 5 * (1 - 5 / 40))
    assert bad.user_attrs["race_bound"] == pytest.approx(bound) and bound < 0
    assert bad.intermediate_values == {0: pytest.approx(_Mixture.table[:5, 2].mean())}
    # as good as the reference: every rung, then the rest, each example scored once
    assert same.user_attrs["examples_scored"] == 40 and "raced_out_at" not in same.user_attrs
    assert second.calls == [(0, 5), (0, 5), (5, 10), (10, 20), (20, 40)]
    assert same.value == pytest.approx(means[best])
    summary = examples_summary(trials, 40, "racing")
    assert summary == {"total": 4 * 40 + 5 + 40, "full": 6 * 40, "trials": 6, "method": "racing"}


# --- a real search: results.json, the log, a resumed study --------------------------------------


@pytest.mark.slow  # two searches with test scores
def test_search_races_a_bad_candidate_and_reports_the_examples_scored(llama_pool, tmp_path, caplog):
    import torch
    from synthetic import TargetMixtureScorer, synthetic_recipe
    from transformers import AutoModelForCausalLM

    from hf_recycle._search.api import search
    from hf_recycle._search.report import summary_text

    _, ckpts = llama_pool
    target = [0.6, 0.3, 0.1]

    class Recording(TargetMixtureScorer):
        def __init__(self, *args):
            super().__init__(*args)
            self.limits = []

        def score(self, model, limit=None, *, resume=None):
            self.limits.append((limit, 0 if resume is None else resume.examples))
            return super().score(model, limit, resume=resume)

    scorer, test_scorer = Recording("mix", ckpts, target), TargetMixtureScorer("mix", ckpts, target)
    n = scorer.num_examples
    racing = {"rungs": [0.25, 0.5], "min_examples": 3}

    def run(trials):
        recipe = synthetic_recipe(
            ckpts,
            tmp_path,
            trials=trials,
            sampler="random",
            baselines=["uniform", "best_single"],
            racing=racing,
        )
        return search(recipe, scorers=[scorer], test_scorers=[test_scorer], n_boot=50, progress=False)

    run(4)  # the baselines, each scored on every example
    assert scorer.limits == [(None, 0)] * 4
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.load_study(study_name="t", storage=url)
    study.enqueue_trial(SearchSpace(3).params_for([0.0, 0.0, 1.0]))  # checkpoint 2 alone: far from the target
    scorer.limits.clear()
    caplog.set_level("INFO", logger="hf_recycle._search.results")
    res = run(5)  # the study resumes: the reference is a trial of the first run

    trials = optuna.load_study(study_name="t", storage=url).get_trials(deepcopy=False)
    bad = trials[4]
    k = math.ceil(0.25 * n)
    assert bad.state.name == "PRUNED" and bad.user_attrs["raced_out_at"] == 0.25
    assert scorer.limits == [(k, 0)] and bad.user_attrs["examples_scored"] == k
    # its partial score is checkpoint 2's on the first k examples, computed here
    model = AutoModelForCausalLM.from_pretrained(ckpts[2], torch_dtype=torch.float32)
    assert bad.user_attrs["partial_mean"] == pytest.approx(scorer.score(model, limit=k).value, rel=1e-5)

    expected = {"total": 4 * n + k, "full": 5 * n, "trials": 5, "method": "racing"}
    assert sum(t.user_attrs["examples_scored"] for t in trials) == expected["total"]
    assert res.examples_scored == expected
    assert json.loads((tmp_path / "results.json").read_text())["examples_scored"] == expected
    line = (
        f"examples scored: {4 * n + k} of the {5 * n} that scoring its 5 trial(s) on every example would take"
    )
    assert (
        line in caplog.text and line in summary_text(res) and "racing:" in summary_text(res).splitlines()[-1]
    )
    assert "Examples scored:" in (tmp_path / "results.md").read_text()
