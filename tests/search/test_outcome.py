"""SearchResults: the typed, frozen view of results.json that search() returns."""

from __future__ import annotations

import dataclasses
import json

import pytest
from synthetic import TargetMixtureScorer, synthetic_recipe

from hf_recycle._search.api import search
from hf_recycle._search.outcome import Candidate, SearchResults
from hf_recycle.errors import SearchError


@pytest.fixture(scope="module")
def searched(llama_pool, tmp_path_factory):
    _, ckpts = llama_pool
    out = tmp_path_factory.mktemp("outcome")
    scorer = TargetMixtureScorer("mix", ckpts, [0.6, 0.3, 0.1])
    recipe = synthetic_recipe(ckpts, out, trials=8, sampler="random")
    return search(recipe, scorers=[scorer], test_scorers=[scorer], n_boot=20), out


def test_search_returns_typed_results_equal_to_results_json(searched):
    results, out = searched
    on_disk = json.loads((out / "results.json").read_text())
    assert isinstance(results, SearchResults) and results.to_json() == on_disk and results == on_disk
    assert SearchResults.from_json(on_disk).to_json() == on_disk  # the format round-trips unchanged
    winner = results.winner
    assert isinstance(winner, Candidate) and winner.trial == on_disk["winner"]["trial"]
    assert winner.weights == tuple(on_disk["winner"]["weights"]) and winner.test == on_disk["winner"]["test"]
    assert set(results.baselines) == set(on_disk["baselines"])
    assert results.baselines["best_single"].checkpoint == on_disk["baselines"]["best_single"]["checkpoint"]
    assert results.study.sampler == "random" and results.tasks[0].name == "mix" and results.has_test
    assert results.comparison == on_disk["comparison"] and results.pareto == ()
    assert results["winner"]["weights"] == on_disk["winner"]["weights"]  # still a mapping of the JSON


def test_results_are_frozen(searched):
    results, _ = searched
    with pytest.raises(dataclasses.FrozenInstanceError):
        results.winner = None  # type: ignore[misc]
    copy = results["winner"]
    copy["weights"] = [0.0]
    assert results["winner"]["weights"] != [0.0]


def test_bad_results_json_is_refused_with_the_reason(searched):
    data = searched[0].to_json()
    with pytest.raises(SearchError, match="results.json has format 7; this hf-recycle reads format 1"):
        SearchResults.from_json({**data, "format": 7})
    del data["winner"]
    with pytest.raises(SearchError, match="results.json is incomplete or malformed .*winner"):
        SearchResults.from_json(data)
    with pytest.raises(SearchError, match=r"results.json has 0 Pareto member\(s\): no member #0"):
        searched[0].candidate(0)
