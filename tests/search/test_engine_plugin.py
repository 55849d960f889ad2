"""A scoring engine plugged into a search sees every rewrite of the weights before it scores."""

from __future__ import annotations

import pytest
from synthetic import TargetMixtureScorer, synthetic_recipe

from hf_recycle._score.engines.transformers import TransformersEngine
from hf_recycle._search.api import search

pytestmark = pytest.mark.slow  # a real search with bootstrapped test scores


class RecordingEngine(TransformersEngine):
    """The reference engine, logging weight changes and scoring calls in order."""

    name = "recording-test-engine"  # a subclass defined outside the registry's package: not registered

    def __init__(self, scorers, log):
        super().__init__(scorers)
        self.log = log

    def weights_changed(self, model):
        self.log.append("weights")

    def score(self, model, **kwargs):
        self.log.append("score")
        return super().score(model, **kwargs)


def test_engine_is_told_of_each_candidate_before_scoring(llama_pool, tmp_path):
    _, ckpts = llama_pool
    target = [0.6, 0.3, 0.1]
    log: list[str] = []
    engine = RecordingEngine([TargetMixtureScorer("mix", ckpts, target)], log)
    test_engine = RecordingEngine([TargetMixtureScorer("mix", ckpts, target)], log)
    recipe = synthetic_recipe(ckpts, tmp_path, trials=8, sampler="random")
    result = search(recipe, scorers=engine, test_scorers=test_engine, n_boot=20)
    assert result is not None
    assert (
        log[0] == "weights" and log.count("weights") >= 5 + 1
    )  # 5 trials, then the winner on the test split
    # every score call follows a weight change for those weights (never a stale model)
    for i, entry in enumerate(log):
        if entry == "score":
            assert "weights" in log[:i]
