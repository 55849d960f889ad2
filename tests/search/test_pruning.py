"""Multi-fidelity search (``search.pruning``): a bad candidate is stopped after its partial score."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
import torch
from synthetic import TargetMixtureScorer, synthetic_recipe

from hf_recycle._search.api import search
from hf_recycle._search.space import SearchSpace

pytestmark = pytest.mark.slow  # each test runs two searches with bootstrapped test scores

TARGET = [0.6, 0.3, 0.1]
FRACTION = 0.25


class RecordingScorer(TargetMixtureScorer):
    """The synthetic task, remembering the ``limit`` and first example of every call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = []

    def score(self, model, limit=None, *, resume=None):
        self.limits.append((limit, 0 if resume is None else resume.examples))
        return super().score(model, limit, resume=resume)


def _recipe(ckpts, out, trials, pruning=True):
    return synthetic_recipe(
        ckpts, out, trials=trials, sampler="random", pruning=pruning, pruning_fraction=FRACTION
    )


def _checkpoint_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)


def test_bad_candidate_is_pruned_on_its_partial_score_and_never_wins(llama_pool, tmp_path):
    _, ckpts = llama_pool
    scorer = RecordingScorer("mix", ckpts, TARGET)
    test_scorer = TargetMixtureScorer("mix", ckpts, TARGET)
    first = search(_recipe(ckpts, tmp_path, 6), scorers=[scorer], test_scorers=[test_scorer], n_boot=50)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.load_study(study_name="t", storage=url)
    done = study.get_trials(deepcopy=False)
    assert len(done) == 6 and sum(t.state.name == "COMPLETE" for t in done) >= 5  # the pruner's startup

    # Two candidates the sampler did not pick: checkpoint 2 alone (farthest from the target
    # mixture) and the target mixture itself (the best possible merge).
    space = SearchSpace(3)
    bad_params = space.params_for([0.0, 0.0, 1.0])
    study.enqueue_trial(bad_params)
    study.enqueue_trial(space.params_for(TARGET))
    scorer.limits.clear()
    res = search(_recipe(ckpts, tmp_path, 8), scorers=[scorer], test_scorers=[test_scorer], n_boot=50)

    trials = optuna.load_study(study_name="t", storage=url).get_trials(deepcopy=False)
    bad, good = trials[6], trials[7]
    assert bad.params == pytest.approx(bad_params)
    assert bad.state.name == "PRUNED" and good.state.name == "COMPLETE"
    # the bad one was scored on the first share of the split only, once; the good one on that
    # share and then on the rest of the split only (its first k examples are not scored twice)
    k = max(1, math.ceil(FRACTION * scorer.num_examples))
    assert k < scorer.num_examples
    assert scorer.limits == [(k, 0), (k, 0), (None, k)]
    # its reported partial score is that of checkpoint 2 on the first k examples, computed here
    partial = scorer.score(_checkpoint_model(ckpts[2]), limit=k).value
    assert bad.intermediate_values[0] == pytest.approx(partial, rel=1e-5)
    assert bad.user_attrs["partial_mean"] == pytest.approx(partial, rel=1e-5)
    assert "mean" not in bad.user_attrs
    # ... and below the median partial score of the trials that completed before it (Optuna's median rule)
    earlier = [t.intermediate_values[0] for t in trials[:6] if t.state.name == "COMPLETE"]
    assert partial < np.median(earlier)

    assert res["trials_pruned"] == sum(t.state.name == "PRUNED" for t in trials) >= 1
    assert res["trials"] == sum(t.state.name == "COMPLETE" for t in trials)
    assert res["winner"]["trial"] == good.number != bad.number
    np.testing.assert_allclose(res["winner"]["weights"], TARGET, atol=1e-9)
    reported = [res["winner"]["trial"], *(b["trial"] for b in res["baselines"].values())]
    pruned = {t.number for t in trials if t.state.name == "PRUNED"}
    assert not pruned & set(reported)
    assert first["winner"]["search"]["mean"] <= res["winner"]["search"]["mean"]


def test_without_pruning_the_same_candidate_is_scored_in_full(llama_pool, tmp_path):
    _, ckpts = llama_pool
    scorer = RecordingScorer("mix", ckpts, TARGET)
    search(_recipe(ckpts, tmp_path, 6, pruning=False), scorers=[scorer])
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'study.db'}")
    study.enqueue_trial(SearchSpace(3).params_for([0.0, 0.0, 1.0]))
    scorer.limits.clear()
    search(_recipe(ckpts, tmp_path, 7, pruning=False), scorers=[scorer])
    last = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'study.db'}").trials[-1]
    assert last.state.name == "COMPLETE" and last.intermediate_values == {}
    assert scorer.limits == [(None, 0)]
    full = scorer.score(_checkpoint_model(ckpts[2])).value
    assert last.value == pytest.approx(full, rel=1e-5)
