"""End-to-end searches on tiny models: known optimum, baselines, resume after SIGKILL, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from synthetic import TargetMixtureScorer, synthetic_recipe

from hf_recycle._search.api import search
from hf_recycle._search.report import paired_bootstrap
from hf_recycle.errors import IncompatibleCheckpointsError, MissingDependencyError, SearchError
from hf_recycle.testing.models import load_state_dict

HERE = Path(__file__).parent
TARGET = [0.6, 0.3, 0.1]


def _trials(storage_url, name="t"):
    import optuna

    return optuna.load_study(study_name=name, storage=storage_url).get_trials(deepcopy=False)


@pytest.mark.slow
def test_search_finds_the_known_best_mixture(llama_pool, tmp_path):
    _, ckpts = llama_pool
    scorers = [TargetMixtureScorer("mix", ckpts, TARGET)]
    res = search(
        synthetic_recipe(ckpts, tmp_path, trials=40), scorers=scorers, test_scorers=scorers, n_boot=200
    )
    assert res["trials"] == 40
    np.testing.assert_allclose(res["winner"]["weights"], TARGET, atol=0.06)
    # baselines: what they are, and the winner beats them on the search split
    b = res["baselines"]
    np.testing.assert_allclose(b["uniform"]["weights"], [1 / 3] * 3)
    singles = [TargetMixtureScorer("mix", ckpts, TARGET)]
    # independent check of best_single: checkpoint 0 is nearest to the 0.6/0.3/0.1 mixture
    assert b["best_single"]["checkpoint"] == 0 and b["best_single"]["weights"] == [1.0, 0.0, 0.0]
    assert b["greedy_soup"]["members"] == [0, 1]  # adding 1 helps; adding 2 to {0, 1} does not
    np.testing.assert_allclose(b["greedy_soup"]["weights"], [0.5, 0.5, 0.0])
    for entry in b.values():
        assert res["winner"]["search"]["mean"] >= entry["search"]["mean"]
        assert set(entry["search"]) == set(entry["test"]) == {"mix", "mean"}
    assert res["comparison"]["baseline"] == "greedy_soup" and res["comparison"]["ci_low"] > 0
    _check_comparisons_against_independent_merges(res, ckpts, tmp_path, seed=0, n_boot=200)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["winner"]["weights"] == res["winner"]["weights"]
    assert [c["path"] for c in on_disk["checkpoints"]] == [str(p) for p in ckpts]
    assert (tmp_path / "results.md").is_file() and (tmp_path / "plots" / "history.png").is_file()
    assert singles  # scorer reusable
    # resuming with a larger budget only adds trials
    res2 = search(synthetic_recipe(ckpts, tmp_path, trials=44), scorers=scorers, test_scorers=None)
    assert res2["trials"] == 44 and res2["winner"]["search"]["mean"] >= res["winner"]["search"]["mean"]


def _merged_per_example(model, states, weights, scorer):
    """Per-example test scores of Σ wᵢ θᵢ, merged here with plain torch into ``model``."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(sum(float(w) * s[name].float() for w, s in zip(weights, states, strict=True)))
    return list(scorer.score(model).per_example)


def _check_comparisons_against_independent_merges(res, ckpts, folder, *, seed, n_boot):
    """Every baseline gets its own paired interval, computed from the right models' test scores."""
    import torch
    from transformers import AutoModelForCausalLM

    scorer = TargetMixtureScorer("mix", ckpts, TARGET)
    states = [load_state_dict(p) for p in ckpts]
    model = AutoModelForCausalLM.from_pretrained(ckpts[0], torch_dtype=torch.float32)
    winner = _merged_per_example(model, states, res["winner"]["weights"], scorer)
    assert set(res["comparisons"]) == set(res["baselines"]) == {"uniform", "best_single", "greedy_soup"}
    for name, entry in res["baselines"].items():
        base = _merged_per_example(model, states, entry["weights"], scorer)
        comp = res["comparisons"][name]
        # the point difference is the plain mean of per-example differences (one task, weight 1)
        assert comp["difference"] == pytest.approx(np.mean(np.subtract(winner, base)), rel=1e-4, abs=1e-6)
        assert comp["difference"] == pytest.approx(
            res["winner"]["test"]["mean"] - entry["test"]["mean"], rel=1e-4, abs=1e-6
        )
        # the interval is the paired bootstrap (tested on its own in test_report.py) of those scores
        expected = paired_bootstrap(
            {"mix": winner}, {"mix": base}, {"mix": 1.0}, {"mix": True}, n_boot=n_boot, seed=seed
        )
        for key in ("ci_low", "ci_high", "p_not_better"):
            assert comp[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), (name, key)
        assert comp["n_boot"] == n_boot and comp["confidence"] == 0.95
        assert comp["ci_low"] <= comp["difference"] <= comp["ci_high"]
    chosen = res["comparison"]
    assert {k: v for k, v in chosen.items() if k not in ("baseline", "chosen_by")} == res["comparisons"][
        chosen["baseline"]
    ]
    # the baselines differ, so do their intervals: each one was compared with its own model
    assert len({res["comparisons"][n]["difference"] for n in res["comparisons"]}) == 3
    md = (folder / "results.md").read_text()
    for name in res["comparisons"]:
        assert f"| {name}" in md


def test_pareto_search_and_layer_granularity(llama_pool, tmp_path):
    _, ckpts = llama_pool
    scorers = [TargetMixtureScorer("a", ckpts, [1, 0, 0]), TargetMixtureScorer("b", ckpts, [0, 0, 1])]
    res = search(
        synthetic_recipe(
            ckpts,
            tmp_path,
            ("a", "b"),
            trials=14,
            sampler="random",
            objective="pareto",
            granularity="layers:1",
        ),
        scorers=scorers,
        test_scorers=scorers,
        n_boot=100,
    )
    front = res["pareto"]
    assert front and all("test" in m and "comparison" in m for m in front)
    for m in front:  # each member against every baseline; its comparison is the chosen baseline's
        assert set(m["comparisons"]) == set(res["baselines"])
        assert m["comparison"] == m["comparisons"][res["comparison"]["baseline"]]
    assert set(res["winner"]["layer_weights"]) == {"embeddings", "layers.0-0", "layers.1-1", "head"}
    trials = [t for t in _trials(f"sqlite:///{tmp_path / 'study.db'}") if t.state.name == "COMPLETE"]
    for m in front:  # no complete trial dominates a front member
        sa, sb = m["search"]["a"], m["search"]["b"]
        assert not any(
            t.values[0] >= sa and t.values[1] >= sb and (t.values[0] > sa or t.values[1] > sb) for t in trials
        )
    assert (tmp_path / "plots" / "pareto.png").is_file()


def test_bad_input_is_refused(llama_pool, gpt2_pool, tmp_path, monkeypatch):
    _, ckpts = llama_pool
    one = [TargetMixtureScorer("mix", ckpts, TARGET)]
    with pytest.raises(SearchError, match="trials must be a positive"):
        search(synthetic_recipe(ckpts, tmp_path), trials=0, scorers=one)
    with pytest.raises(SearchError, match="at least 2 checkpoints"):
        search(synthetic_recipe(ckpts[:1], tmp_path), scorers=one)
    with pytest.raises(SearchError, match="pareto"):
        search(
            synthetic_recipe(ckpts, tmp_path, ("mix", "other"), objective="pareto", sampler="tpe"),
            scorers=one,
        )
    with pytest.raises(SearchError, match="below the 6 trials the baselines"):
        search(synthetic_recipe(ckpts, tmp_path, trials=5), scorers=one)
    with pytest.raises(IncompatibleCheckpointsError):
        search(synthetic_recipe([ckpts[0], gpt2_pool[1][0]], tmp_path), scorers=one)
    monkeypatch.setitem(sys.modules, "cmaes", None)
    with pytest.raises(MissingDependencyError, match="'cmaes'"):
        search(synthetic_recipe(ckpts, tmp_path / "m"), scorers=one)


_WORKER = """
import os, signal, sys
sys.path.insert(0, {here!r})
import optuna
from synthetic import TargetMixtureScorer
from hf_recycle.recipe import Recipe
from hf_recycle._search.api import search

def die():
    os.kill(os.getpid(), signal.SIGKILL)

mode = {mode!r}
if mode == "scoring":  # mid-trial: its parameters are stored, its scoring is under way
    score = TargetMixtureScorer.score
    def killing_score(self, *args, **kwargs):
        if self.calls == 5:
            die()
        return score(self, *args, **kwargs)
    TargetMixtureScorer.score = killing_score
else:  # the trial is RUNNING and has no parameters yet
    init = optuna.trial.Trial.__init__
    def killing_init(self, study, trial_id):
        init(self, study, trial_id)
        queued = "fixed_params" in self._cached_frozen_trial.system_attrs
        if (mode == "queued" and queued and self.number == 2) or (mode == "sampled" and not queued):
            die()
    optuna.trial.Trial.__init__ = killing_init
ckpts = {ckpts!r}
recipe = Recipe.model_validate({{"name": "t", "checkpoints": ckpts, "search": {{"trials": {trials}}}, "output": {{"dir": {out!r}}}}})
search(recipe, scorers=[TargetMixtureScorer("mix", ckpts, {target!r})])
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["scoring", "queued", "sampled"])
def test_sigkill_mid_trial_then_resume_loses_and_duplicates_nothing(llama_pool, tmp_path, mode):
    """A worker killed with a trial RUNNING, with or without parameters: the next run fails
    that trial, runs it again when it has parameters to run, and ends with exactly the budget."""
    from hf_recycle._search.worker import WORKER_ATTR

    _, ckpts = llama_pool
    n = 12
    script = tmp_path / "worker.py"
    script.write_text(
        _WORKER.format(
            here=str(HERE),
            ckpts=[str(p) for p in ckpts],
            trials=n,
            out=str(tmp_path),
            target=TARGET,
            mode=mode,
        )
    )
    url = f"sqlite:///{tmp_path / 'study.db'}"
    proc = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.wait(timeout=300) == -signal.SIGKILL
    before = _trials(url)
    running = [t for t in before if t.state.name == "RUNNING"]
    assert len(running) == 1
    killed = running[0]
    assert killed.system_attrs[WORKER_ATTR]["pid"] == proc.pid
    assert (killed.params == {}) == (mode != "scoring")
    fixed = killed.system_attrs.get("fixed_params")
    if mode == "queued":
        assert killed.number == 2 and killed.user_attrs == {"baseline": "single", "checkpoint": 1}
    done_before = {t.number: t.values for t in before if t.state.name == "COMPLETE"}
    assert len(done_before) == {"scoring": 5, "queued": 2, "sampled": 5}[mode]

    scorers = [TargetMixtureScorer("mix", ckpts, TARGET)]
    res = search(synthetic_recipe(ckpts, tmp_path, trials=n), scorers=scorers)
    after = _trials(url)
    complete = [t for t in after if t.state.name == "COMPLETE"]
    assert len(complete) == n == res["trials"]
    assert not [t for t in after if t.state.name == "RUNNING"]  # nothing stays RUNNING
    by_number = {t.number: t for t in after}
    assert by_number[killed.number].state.name == "FAIL"
    retries = [t for t in after if t.system_attrs.get("failed_trial") == killed.number]
    if mode == "sampled":  # nothing to run again: a new sampled trial took its slot
        assert retries == []
    else:
        assert len(retries) == 1 and retries[0].state.name == "COMPLETE"
        for key in ("baseline", "checkpoint"):
            assert retries[0].user_attrs.get(key) == killed.user_attrs.get(key)
        assert retries[0].params == (killed.params or fixed)
    for number, values in done_before.items():  # nothing lost
        assert by_number[number].state.name == "COMPLETE" and by_number[number].values == values
    kinds = [
        (t.user_attrs.get("baseline"), t.user_attrs.get("checkpoint"))
        for t in complete
        if t.user_attrs.get("baseline") in ("uniform", "single")
    ]
    assert sorted(kinds, key=str) == sorted(
        [("uniform", None), ("single", 0), ("single", 1), ("single", 2)], key=str
    )
    # a second rerun has nothing to do
    res = search(synthetic_recipe(ckpts, tmp_path, trials=n), scorers=scorers)
    assert res["trials"] == n and len(_trials(url)) == len(after)


def test_study_of_another_recipe_is_not_resumed(llama_pool, tmp_path):
    _, ckpts = llama_pool
    one = [TargetMixtureScorer("mix", ckpts, TARGET)]
    search(synthetic_recipe(ckpts, tmp_path, trials=6, sampler="random"), scorers=one)
    with pytest.raises(SearchError, match="different search"):
        search(synthetic_recipe(ckpts, tmp_path, trials=6, sampler="random", weights="signed"), scorers=one)
