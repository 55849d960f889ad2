"""Choosing the returned model (hf_recycle._search.selection): the sign-flip test, the rule, and
searches whose answer is known by construction (noise gains, a clear win, a validation split that
reverses the search ranking, too few examples to beat a baseline)."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from synthetic import Result, TargetMixtureScorer, synthetic_recipe

from hf_recycle._score.engines import as_engine
from hf_recycle._search.objective import PER_EXAMPLE_ATTR
from hf_recycle._search.selection import (
    VALIDATION_ATTR,
    Contender,
    decide,
    search_scores,
    sign_flip_max_test,
    sign_flip_test,
)
from hf_recycle.errors import RecipeError
from hf_recycle.recipe import Recipe
from hf_recycle.testing.models import load_state_dict

ONE = {"t": 1.0}
UP = {"t": True}


def _flat(diffs_by_task, weights, hib):
    """Per example, its signed, weighted share of the macro-average difference."""
    total = sum(weights.values())
    return [
        (w / total / len(d)) * (1 if hib[t] else -1) * x
        for t, d in diffs_by_task.items()
        for w, x in zip([weights[t]] * len(d), d, strict=True)
    ]


def _brute_force_p(diffs_by_task, weights, hib):
    """P(statistic >= observed) over every sign pattern, enumerated with itertools."""
    flat = _flat(diffs_by_task, weights, hib)
    observed = sum(flat)
    hits = sum(
        sum(s * x for s, x in zip(signs, flat, strict=True)) >= observed - 1e-12
        for signs in itertools.product((1, -1), repeat=len(flat))
    )
    return hits / 2 ** len(flat)


def test_exact_p_value_is_the_share_of_sign_patterns_at_least_as_good():
    a = {"x": [3.0, 1.0, 0.5, 2.0, -0.25], "y": [1.0, 0.0, 2.0]}
    b = {"x": [1.0, 1.5, 0.0, 0.0, 0.0], "y": [0.5, 0.5, 0.5]}
    weights, hib = {"x": 2.0, "y": 1.0}, {"x": True, "y": False}
    diffs = {t: np.subtract(a[t], b[t]).tolist() for t in a}
    out = sign_flip_test(a, b, weights, hib)
    assert out["exact"] and out["p_value"] == pytest.approx(_brute_force_p(diffs, weights, hib))
    # the difference is that of the macro-averages (y is lower-is-better: it enters negated)
    macro = lambda m: (2 * np.mean(m["x"]) - np.mean(m["y"])) / 3  # noqa: E731
    assert out["difference"] == pytest.approx(macro(a) - macro(b))


def test_few_examples_cannot_beat_a_baseline():
    # 4 examples, all better: every sign pattern but the observed one is worse, so p = 1/16
    out = sign_flip_test({"t": [1, 1, 1, 1]}, {"t": [0, 0, 0, 0]}, ONE, UP)
    assert out["p_value"] == 1 / 16
    # a tie everywhere is no evidence at all
    assert sign_flip_test({"t": [1, 0]}, {"t": [1, 0]}, ONE, UP)["p_value"] == 1.0


def test_monte_carlo_p_value_agrees_with_enumeration():
    rng = np.random.default_rng(3)
    d = rng.normal(0.35, 1.0, size=18)  # > EXACT_MAX: random patterns
    flat = d / d.size
    bits = (np.arange(2**18)[:, None] >> np.arange(18)) & 1
    exact = float(np.mean((2 * bits - 1) @ flat >= flat.sum() - 1e-12))
    out = sign_flip_test({"t": d}, {"t": np.zeros(18)}, ONE, UP, resamples=40_000, seed=1)
    assert not out["exact"]
    assert abs(out["p_value"] - exact) < 4 * np.sqrt(exact * (1 - exact) / 40_000) + 1e-4


def _brute_force_max_t(diffs, weights, hib):
    """Per candidate, P(max over candidates of the flipped statistic >= its observed one), over every
    sign pattern of the examples (one pattern flips the same examples of every candidate); each
    statistic is over its sign-flip standard deviation, the root of its summed squares."""
    flat = [_flat(d, weights, hib) for d in diffs]
    flat = [[x / (sum(y * y for y in f) ** 0.5 or 1.0) for x in f] for f in flat]
    observed = [sum(f) for f in flat]
    hits = [0] * len(diffs)
    patterns = list(itertools.product((1, -1), repeat=len(flat[0])))
    for signs in patterns:
        top = max(sum(s * x for s, x in zip(signs, f, strict=True)) for f in flat)
        hits = [h + (top >= o - 1e-12) for h, o in zip(hits, observed, strict=True)]
    return [h / len(patterns) for h in hits]


def test_max_t_adjusted_p_is_the_share_of_patterns_whose_largest_statistic_is_at_least_as_good():
    rng = np.random.default_rng(5)
    b = {"x": rng.integers(0, 2, 6).astype(float), "y": rng.integers(0, 2, 5).astype(float)}
    weights, hib = {"x": 2.0, "y": 1.0}, {"x": True, "y": True}
    cands = [{t: rng.integers(0, 2, v.size).astype(float) for t, v in b.items()} for _ in range(3)]
    cands.append({t: np.maximum(v, cands[0][t]) for t, v in b.items()})  # a strong one among them
    out = sign_flip_max_test(cands, b, weights, hib)
    diffs = [{t: np.subtract(c[t], b[t]).tolist() for t in b} for c in cands]
    expected = _brute_force_max_t(diffs, weights, hib)
    for got, want, d in zip(out, expected, diffs, strict=True):
        assert got["exact"] and got["p_adjusted"] == pytest.approx(want)
        assert got["p_value"] == pytest.approx(_brute_force_p(d, weights, hib))
    # one candidate: the plain test
    alone = sign_flip_max_test(cands[3:], b, weights, hib)[0]
    assert alone["p_adjusted"] == alone["p_value"] == sign_flip_test(cands[3], b, weights, hib)["p_value"]


def test_max_t_counts_alike_candidates_once_and_is_at_most_bonferroni():
    rng = np.random.default_rng(11)
    base = rng.integers(0, 2, 300).astype(float)
    gain = np.where(rng.random(300) < 0.12, 1.0, base)  # right where the baseline is, and some more
    same = sign_flip_max_test([{"t": gain}] * 5, {"t": base}, ONE, UP, resamples=20_000, seed=2)
    single = sign_flip_test({"t": gain}, {"t": base}, ONE, UP, resamples=20_000, seed=2)
    # five copies of one merge are one test, not five
    assert all(r["p_adjusted"] == pytest.approx(single["p_value"]) for r in same)
    others = [{"t": rng.integers(0, 2, 300).astype(float)} for _ in range(4)]
    mixed = sign_flip_max_test([{"t": gain}, *others], {"t": base}, ONE, UP, resamples=20_000, seed=2)
    for r in mixed:  # never below the candidate's own p, never above Bonferroni's (up to resampling)
        assert r["p_value"] <= r["p_adjusted"] <= min(1.0, 5 * r["p_value"]) + 2e-3


def test_max_t_keeps_the_family_wise_error_rate_under_the_null():
    # 5 candidates that are each no better than the baseline: with alpha 0.05 any candidate passes
    # in about 11% of the searches without a correction; with max-T in at most 5%
    rng = np.random.default_rng(0)
    uncorrected = corrected = 0
    runs = 300
    for i in range(runs):
        base = rng.integers(0, 2, 80).astype(float)
        cands = [{"t": rng.integers(0, 2, 80).astype(float)} for _ in range(5)]
        out = sign_flip_max_test(cands, {"t": base}, ONE, UP, resamples=1000, seed=i)
        uncorrected += any(r["p_value"] <= 0.05 for r in out)
        corrected += any(r["p_adjusted"] <= 0.05 for r in out)
    assert uncorrected / runs > 0.09, corrected  # without it the error rate is well above alpha
    assert corrected / runs <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / runs)


def test_alike_validation_candidates_pass_where_bonferroni_over_them_would_not():
    # five near-identical top trials, each p ~ 0.02 on validation: Bonferroni (0.05 / 5) refuses
    # them all, max-T sees one test and returns the best of them
    n = 400
    rng = np.random.default_rng(4)
    base = (rng.random(n) < 0.8).astype(float)
    fixed = np.flatnonzero(base == 0)[:14]
    broken = np.flatnonzero(base == 1)[:4]
    cands = []
    for i in range(5):
        x = base.copy()
        x[fixed] = 1.0
        x[broken] = 0.0
        x[fixed[i]] = 0.0  # each misses one of the fixes: alike, not equal
        cands.append(_c(i + 1, x, 0.9 - i / 100))
    uniform = _c(0, base, 0.85, baseline="uniform")
    chosen = _decide(cands, [uniform], split="validation")
    rows = chosen.record["candidates"]
    assert all(0.01 < r["p_value"] <= 0.05 for r in rows), [r["p_value"] for r in rows]
    assert all(r["passed"] for r in rows) and not chosen.baseline_returned
    assert chosen.winner.trial == 1 and "adjusted p = " in chosen.record["chosen_because"]


def _c(trial, per_example, search_mean, mean=None, baseline=None):
    values = np.asarray(per_example, dtype=np.float64)
    label = {"uniform": "uniform soup"}.get(baseline, baseline)
    return Contender(
        trial, search_mean, float(values.mean()) if mean is None else mean, {"t": values}, baseline, label
    )


def _decide(candidates, baselines, split="search", tried=None, alpha=0.05):
    return decide(
        candidates,
        baselines,
        split=split,
        tried=len(candidates) if tried is None else tried,
        alpha=alpha,
        weights=ONE,
        higher_is_better=UP,
        top=5,
    )


def test_a_gain_that_is_noise_returns_the_baseline():
    # 30 candidates and a baseline that are all coin flips on the same 200 examples: the best
    # candidate's search mean is above the baseline's by chance alone (the winner's curse)
    rng = np.random.default_rng(0)
    flips = rng.permutation(np.r_[np.ones(100), np.zeros(100)])  # right half the time, exactly
    uniform = _c(0, flips, 0.5, baseline="uniform")
    pool = [rng.integers(0, 2, 200) for _ in range(30)]
    ranked = sorted(
        (_c(i + 1, x, float(np.mean(x))) for i, x in enumerate(pool)), key=lambda c: -c.search_mean
    )
    assert ranked[0].search_mean > uniform.search_mean + 0.05
    chosen = _decide(ranked[:5], [uniform], tried=30)
    assert chosen.baseline_returned and chosen.winner is uniform
    record = chosen.record
    assert record["baseline_returned"] and record["split"] == "search" and record["tests"] == 30
    assert record["chosen_because"].startswith(
        "optimized merges did not beat the uniform soup on the search split"
    )
    assert record["chosen_because"].endswith("this is the uniform soup")
    assert [r["trial"] for r in record["candidates"]] == [c.trial for c in ranked[:5]]
    assert not any(r["passed"] for r in record["candidates"])


def test_a_clear_gain_returns_the_optimized_merge():
    base = np.zeros(200)
    better = np.where(np.arange(200) < 150, 1.0, 0.0)  # right on 150 examples the baseline misses
    chosen = _decide([_c(7, better, 0.75)], [_c(0, base, 0.0, baseline="uniform")], tried=40)
    assert not chosen.baseline_returned and chosen.winner.trial == 7
    assert chosen.record["candidates"][0]["passed"] and chosen.record["chosen"] == {
        "trial": 7,
        "baseline": None,
    }
    assert chosen.record["chosen_because"].startswith(
        "trial 7 beat the uniform soup on the search split by +0.75"
    )


def test_the_correction_counts_the_trials_tried_without_a_validation_split():
    # 9 examples, all better: p = 1/512 ~ 0.002, below 0.05/5 but above 0.05/40
    base, cand = _c(0, np.zeros(9), 0.0, baseline="uniform"), _c(3, np.ones(9), 1.0)
    assert _decide([cand], [base], split="validation").winner is cand
    assert _decide([cand], [base], tried=5).winner is cand
    assert _decide([cand], [base], tried=40).winner is base


def test_the_validation_winner_is_returned_when_validation_reverses_the_search_ranking():
    n = 64
    top = _c(1, np.r_[np.ones(20), np.zeros(n - 20)], 0.9)  # best on search, poor on validation
    second = _c(2, np.r_[np.ones(50), np.zeros(n - 50)], 0.8)
    third = _c(3, np.r_[np.ones(40), np.zeros(n - 40)], 0.7)
    uniform = _c(0, np.r_[np.ones(25), np.zeros(n - 25)], 0.6, baseline="uniform")
    single = _c(5, np.r_[np.ones(30), np.zeros(n - 30)], 0.5, baseline="best_single")
    chosen = _decide([top, second, third], [uniform, single], split="validation")
    # the reference is the baseline of best *validation* mean; the winner has the best validation mean
    assert chosen.reference is single and chosen.winner is second
    rows = {r["trial"]: r for r in chosen.record["candidates"]}
    assert not rows[1]["passed"] and rows[2]["passed"] and rows[3]["passed"]
    assert rows[2]["validation"] == pytest.approx(50 / 64)
    assert chosen.record["tests"] == 3 and chosen.record["correction"] == "max-t"
    assert all(r["p_value"] <= r["p_adjusted"] <= 3 * r["p_value"] for r in rows.values())
    assert "of the 2 trials that did, it has the best mean on validation" in chosen.record["chosen_because"]


def test_edge_cases_no_candidate_or_no_baseline():
    uniform = _c(0, [1.0, 0.0], 0.5, baseline="uniform")
    chosen = _decide([], [uniform])
    assert chosen.winner is uniform and chosen.record["chosen_because"] == (
        "no optimized trial completed; this is the uniform soup"
    )
    lone = _decide([_c(4, [1.0, 1.0], 1.0), _c(6, [0.0, 1.0], 0.5)], [])
    assert lone.winner.trial == 4 and lone.reference is None and not lone.baseline_returned
    assert lone.record["chosen_because"].startswith("no baseline ran")
    with pytest.raises(ValueError, match="nothing to choose from"):
        _decide([], [])


# --- recipes --------------------------------------------------------------------------------

RECIPE = """\
name: v
checkpoints: [a, b]
tasks:
  - name: x
    data: {{path: json, data_files: d.jsonl}}
    search_split: "train[:64]"
    validation_split: "{validation}"
    test_split: "train[96:]"
    prompt: "{{q}}"
    target: "{{a}}"
{more}"""


def test_validation_split_is_checked_like_the_other_splits():
    ok = Recipe.from_text(RECIPE.format(validation="train[64:96]", more=""))
    assert ok.tasks[0].validation_split == "train[64:96]" and ok.search.select.top == 5
    for split, words in [
        ("train[60:80]", "overlaps search_split 'train[:64]' (rows 60 to 63 of 'train' are in both)"),
        ("train[90:]", "overlaps test_split 'train[96:]' (rows 96 onward of 'train' are in both)"),
        ("train", "the whole split 'train' holds both"),
        ("train[:64]", "overlaps search_split 'train[:64]' (the same examples)"),
        ("train[:", "is not a split expression"),
    ]:
        with pytest.raises(RecipeError, match="validation_split") as info:
            Recipe.from_text(RECIPE.format(validation=split, more=""))
        assert words in str(info.value), split
    # another split name, or mixed units, are the user's to keep apart
    Recipe.from_text(RECIPE.format(validation="validation", more=""))
    Recipe.from_text(RECIPE.format(validation="train[10%:20%]", more=""))


def test_every_task_or_none_has_a_validation_split():
    second = '  - {name: y, data: json, prompt: "{q}", target: "{a}"}\n'
    with pytest.raises(RecipeError) as info:
        Recipe.from_text(RECIPE.format(validation="train[64:96]", more=second))
    assert ":11: tasks[1]: task 'y' has no validation_split but task 'x' has one" in str(info.value)


@pytest.mark.parametrize("select", ["{top: 0}", "{alpha: 1}", "{alpha: 0}", "{top: 3, alhpa: 0.1}"])
def test_bad_select_settings_are_refused(select):
    text = RECIPE.format(validation="train[64:96]", more="") + f"search: {{select: {select}}}\n"
    with pytest.raises(RecipeError, match=r"search\.select"):
        Recipe.from_text(text)


# --- searches on tiny models ------------------------------------------------------------------


@dataclass
class NoiseScorer:
    """Coin flips: each example's score is a pseudo-random bit drawn from the live weights, so
    no merge is better than another and any search gain is noise."""

    name: str = "noise"
    num_examples: int = 40
    weight: float = 1.0
    higher_is_better: bool = True
    calls: int = 0

    def bits(self, model):
        """Each example's score (0 or 1) for the live ``model``."""
        digest = hashlib.sha256()
        for _, param in sorted(model.named_parameters()):
            digest.update(param.detach().float().numpy().round(5).tobytes())
        return np.random.default_rng(int.from_bytes(digest.digest()[:8], "little")).integers(
            0, 2, self.num_examples
        )

    def score(self, model, limit=None, *, resume=None):
        self.calls += 1
        per = tuple(float(b) for b in self.bits(model)[: limit or self.num_examples])
        return Result(self.name, float(np.mean(per)), per, True, len(per))


class NoiseGainScorer(NoiseScorer):
    """Coin flips again, but an optimized merge wins a little: a baseline's merge (uniform over some
    of ``checkpoints``, weights read back from the live embedding by least squares) gets exactly
    half of the examples right, any other merge ``gain`` more, at pseudo-random places. So every
    optimized trial beats every baseline on the search split, by a margin that noise explains."""

    def __init__(self, checkpoints, gain=2, num_examples=40):
        super().__init__(num_examples=num_examples)
        self.gain = gain
        self.key = "model.embed_tokens.weight"
        self.columns = torch.stack([load_state_dict(p)[self.key].float().ravel() for p in checkpoints], 1)

    def weights(self, model):
        live = dict(model.named_parameters())[self.key].detach().float().ravel()
        return torch.linalg.lstsq(self.columns, live[:, None]).solution.ravel().numpy()

    def bits(self, model):
        w = self.weights(model)
        members = w[np.abs(w) > 1e-3]
        baseline = bool(np.allclose(members, members[0], atol=1e-3))
        digest = hashlib.sha256(np.round(w, 4).tobytes()).digest()
        order = np.random.default_rng(int.from_bytes(digest[:8], "little")).permutation(self.num_examples)
        bits = np.zeros(self.num_examples)
        bits[order[: self.num_examples // 2 + (0 if baseline else self.gain)]] = 1.0
        return bits


def _complete(out):
    import optuna

    study = optuna.load_study(study_name="t", storage=f"sqlite:///{out / 'study.db'}")
    return study, [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]


def test_search_with_noise_gains_returns_the_best_baseline(llama_pool, tmp_path):
    from hf_recycle._search.api import search
    from hf_recycle._search.report import summary_text

    _, ckpts = llama_pool
    scorer = NoiseGainScorer(ckpts)
    res = search(synthetic_recipe(ckpts, tmp_path, trials=20, sampler="random"), scorers=[scorer])
    study, complete = _complete(tmp_path)
    assert all(len(t.system_attrs[PER_EXAMPLE_ATTR]["noise"]) == 40 for t in complete)  # what it tests on
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 20
    for t in complete:  # the scorer read each trial's merge weights back from the live model
        assert t.user_attrs["mean"] == (0.5 if "baseline" in t.user_attrs else 0.55)
    naive = max(complete, key=lambda t: (t.user_attrs["mean"], -t.number))
    assert "baseline" not in naive.user_attrs  # the search's best is an optimized trial...
    baselines = res["baselines"]
    best = max(baselines, key=lambda n: baselines[n]["search"]["mean"])  # ties: the first listed
    assert naive.user_attrs["mean"] > baselines[best]["search"]["mean"]
    # ...but its gain is noise: the returned model is the baseline of best search mean
    winner = res["winner"]
    assert winner["baseline"] == best and winner["trial"] == baselines[best]["trial"]
    assert winner["weights"] == baselines[best]["weights"] and res.baseline_returned
    sel = res["selection"]
    assert sel["baseline_returned"] and sel["baseline"] == best and sel["split"] == "search"
    # every optimized trial the study ran counts, complete or stopped early
    assert sel["tried"] == sel["tests"] == sum("baseline" not in t.user_attrs for t in finished)
    assert sel["candidates"][0]["trial"] == naive.number and not sel["candidates"][0]["passed"]
    assert "not an optimized merge" in summary_text(
        res
    ) and "why: optimized merges did not beat" in summary_text(res)
    assert "## How the winner was chosen" in (tmp_path / "results.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["selection"] == sel


def test_search_scores_rescore_a_trial_without_stored_examples():
    import optuna

    scorer = NoiseScorer(num_examples=6)
    seen = []
    model = torch.nn.Linear(2, 1)
    resident = SimpleNamespace(model=model, set_weights=lambda w, d: seen.append((list(w), d)))
    trial = optuna.trial.create_trial(
        value=0.5, user_attrs={"weights": [0.25, 0.75], "scores": {"noise": 0.5}, "mean": 0.5}
    )
    engine = as_engine([scorer])
    fresh = search_scores(trial, resident, engine)
    assert seen == [([0.25, 0.75], None)] and scorer.calls == 1
    assert fresh["per_example"]["noise"] == list(scorer.score(model).per_example)
    stored = optuna.trial.create_trial(
        value=0.5,
        user_attrs=dict(trial.user_attrs),
        system_attrs={PER_EXAMPLE_ATTR: {"noise": [1.0, 0.0]}},
    )
    assert search_scores(stored, resident, engine)["per_example"] == {"noise": [1.0, 0.0]}
    assert len(seen) == 1


def _enqueue(recipe, scorers, weights):
    """Create the study (baselines queued first), then queue trials of these weights."""
    from hf_recycle._search.api import create_study, prepare

    create_study(recipe, scorers=scorers)
    setup = prepare(recipe, scorers=scorers)
    setup.close()
    study, _ = _complete(recipe.output_dir)
    for w in weights:
        study.enqueue_trial(setup.space.params_for(w))


SEARCH_TARGET = [0.6, 0.3, 0.1]
VALIDATION_TARGET = [0.45, 0.2, 0.35]
SECOND = [0.5, 0.2, 0.3]


def test_validation_split_picks_its_winner_and_is_scored_once(llama_pool, tmp_path):
    from hf_recycle._search.api import search

    _, ckpts = llama_pool
    search_scorer = TargetMixtureScorer("mix", ckpts, SEARCH_TARGET)
    validation_scorer = TargetMixtureScorer("mix", ckpts, VALIDATION_TARGET)
    # 5 baseline trials (uniform, 3 singles, greedy soup {0, 1}) and two chosen merges: the
    # search's optimum, and SECOND, worse on search but nearest the validation target
    recipe = synthetic_recipe(ckpts, tmp_path, trials=7, sampler="random")
    _enqueue(recipe, [search_scorer], [SEARCH_TARGET, SECOND])
    kwargs = dict(scorers=[search_scorer], test_scorers=[search_scorer], n_boot=50)
    res = search(recipe, validation_scorers=[validation_scorer], **kwargs)
    study, complete = _complete(tmp_path)
    optimized = sorted(
        (t for t in complete if "baseline" not in t.user_attrs), key=lambda t: -t.user_attrs["mean"]
    )
    assert len(optimized) == 2 and np.allclose(optimized[0].user_attrs["weights"], SEARCH_TARGET)
    assert res["baselines"]["greedy_soup"]["members"] == [0, 1]

    winner = res["winner"]
    assert winner["trial"] == optimized[1].number and np.allclose(winner["weights"], SECOND)
    assert "baseline" not in winner and not res.baseline_returned
    assert winner["search"]["mean"] < optimized[0].user_attrs["mean"]
    # its validation score is the validation scorer's, on the merge Σ wᵢ θᵢ built here
    states = [load_state_dict(p) for p in ckpts]
    expected = -1e4 * np.mean(
        [
            float(
                (
                    (
                        sum(w * s[k].float() for w, s in zip(SECOND, states, strict=True))
                        - validation_scorer.target[k]
                    )
                    ** 2
                ).mean()
            )
            for k in validation_scorer.keys
        ]
    )
    assert winner["validation"]["mean"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert set(winner) >= {"search", "validation", "test"}
    sel = res["selection"]
    assert sel["split"] == "validation" and sel["tests"] == 2 and not sel["baseline_returned"]
    assert {r["trial"]: r["passed"] for r in sel["candidates"]} == {
        optimized[0].number: False,
        optimized[1].number: True,
    }
    reference = max(res["baselines"], key=lambda n: res["baselines"][n]["validation"]["mean"])
    assert sel["baseline"] == reference == res["comparison"]["baseline"]
    assert res["comparison"]["chosen_by"] == "validation mean"

    # scored on validation once, kept in the study: another worker (here: a resumed search) reuses them
    stored = [k for k in study.user_attrs if k.startswith(VALIDATION_ATTR)]
    assert len(stored) == 2 + len({b["trial"] for b in res["baselines"].values()})
    counting = TargetMixtureScorer("mix", ckpts, VALIDATION_TARGET)
    again = search(recipe, validation_scorers=[counting], **kwargs)
    assert counting.calls == 0 and again["selection"] == sel and again["winner"] == winner

    # without the validation split, the search's optimum wins: its gain over every baseline is clear
    plain = search(
        recipe, output_dir=tmp_path / "plain", storage=f"sqlite:///{tmp_path / 'study.db'}", **kwargs
    )
    assert plain["winner"]["trial"] == optimized[0].number and plain["selection"]["split"] == "search"
    assert plain["selection"]["candidates"][0]["passed"] and "validation" not in plain["winner"]


@pytest.mark.slow
def test_run_returns_and_merges_the_baseline_when_four_validation_examples_cannot_tell(
    llama_pool, tmp_path, capsys
):
    """With 4 validation examples no p-value is below 1/16 > alpha / candidates: whatever the models,
    the run returns the best baseline on validation, merged exactly, and says so."""
    import yaml
    from huggingface_hub import ModelCard

    from hf_recycle.cli import main

    _, ckpts = llama_pool
    rows = [{"q": f"{i}+{i}=", "a": str(2 * i)} for i in range(12)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {
        "name": "sums",
        "data": {"path": "json", "data_files": "data.jsonl"},
        "search_split": "train[:4]",
        "validation_split": "train[4:8]",
        "test_split": "train[8:]",
        "kind": "loglikelihood",
        "prompt": "{q}",
        "target": "{a}",
    }
    recipe = {
        "name": "pick",
        "checkpoints": [str(p) for p in ckpts],
        "merge": {"dtype": "float32", "device": "cpu"},
        "search": {"trials": 9, "sampler": "random"},
        "tasks": [task],
        "output": {"dir": str(tmp_path / "out")},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["-q", "run", str(path)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    sel, winner, baselines = results["selection"], results["winner"], results["baselines"]
    assert sel["baseline_returned"] and sel["split"] == "validation"
    assert all(r["p_value"] >= 1 / 16 and not r["passed"] for r in sel["candidates"])
    name = max(baselines, key=lambda n: (baselines[n]["validation"]["mean"], baselines[n]["search"]["mean"]))
    assert list(baselines) == ["uniform", "best_single", "greedy_soup"]  # ties: the first listed
    assert winner["baseline"] == sel["baseline"] == name
    assert winner["validation"] == baselines[name]["validation"] and winner["test"] == baselines[name]["test"]
    label = {
        "uniform": "uniform soup",
        "best_single": "best single checkpoint",
        "greedy_soup": "greedy soup",
    }[name]
    if name == "best_single":
        label += f" (#{baselines[name]['checkpoint']})"
    because = f"optimized merges did not beat the {label} on validation; this is the {label}"
    assert sel["chosen_because"] == because
    assert f"returned the {label} (trial {winner['trial']}), not an optimized merge" in printed
    assert f"why: {because}" in printed

    # the model folder holds that baseline, by its definition: the checkpoint itself, or a soup
    members = {
        "uniform": [0, 1, 2],
        "best_single": [baselines["best_single"]["checkpoint"]],
        "greedy_soup": baselines.get("greedy_soup", {}).get("members"),
    }[name]
    states = [load_state_dict(p) for p in ckpts]
    merged = load_state_dict(tmp_path / "out" / "model")
    assert set(merged) == set(states[0])
    for key, tensor in merged.items():
        if len(members) == 1:
            assert torch.equal(tensor, states[members[0]][key]), key
        else:
            expected = sum(states[i][key].double() for i in members) / len(members)
            torch.testing.assert_close(tensor.double(), expected, atol=1e-6, rtol=1e-5)
    card = ModelCard.load(tmp_path / "out" / "model" / "README.md")
    assert f"is the **{label}** of 3 checkpoints" in card.text and "not an optimized merge" in card.text
    assert because in card.text and "### How this model was chosen" in card.text
    assert "validation `train[4:8]`" in card.text
    assert [r.metric_value for r in card.data.eval_results] == [winner["test"]["sums"]]
