"""The sampler registry: one module per sampler, found without optuna, built as Optuna's own samplers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hf_recycle._search.samplers import SAMPLERS, SINGLE_OBJECTIVE_SAMPLERS, make_sampler
from hf_recycle._search.space import SearchSpace
from hf_recycle.errors import SearchError

EXPECTED = {
    "cmaes": "CmaEsSampler",
    "tpe": "TPESampler",
    "gp": "GPSampler",
    "random": "RandomSampler",
    "nsga2": "NSGAIISampler",
}


def test_registry_lists_every_sampler_in_order():
    """The built-in samplers, in order (a sampler added since is one more module and its own test)."""
    assert [n for n in SAMPLERS if n in EXPECTED] == list(EXPECTED)
    assert [n for n in SINGLE_OBJECTIVE_SAMPLERS if n in EXPECTED] == ["cmaes"]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_adapter_builds_its_optuna_sampler(name):
    import optuna

    sampler = make_sampler(name, SearchSpace(3), seed=1, n_objectives=1, trials=30)
    assert isinstance(sampler, getattr(optuna.samplers, EXPECTED[name]))  # cmaes: a subclass (its start)
    if name == "nsga2":
        assert sampler._population_size == 10  # max(4, min(50, 30 // 3))


def test_pareto_refuses_single_objective_samplers_and_unknown_names():
    with pytest.raises(
        SearchError, match="sampler 'cmaes' optimizes a single objective; .* tpe, gp, random, nsga2"
    ):
        make_sampler("cmaes", SearchSpace(2), seed=0, n_objectives=2, trials=10)
    with pytest.raises(
        SearchError, match="unknown sampler 'bayes': use one of cmaes, tpe, gp, random, nsga2"
    ):
        make_sampler("bayes", SearchSpace(2), seed=0, n_objectives=1, trials=10)


def test_the_registry_and_recipe_schema_load_no_optuna():
    code = "import sys, hf_recycle.recipe, hf_recycle._search.samplers; print('optuna' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
