"""Every registered merge method: search candidate == streaming merge == independent reference."""

from __future__ import annotations

import pytest

from hf_recycle._merge.methods import METHODS
from hf_recycle.testing import conformance
from hf_recycle.testing.merge_reference import REFERENCES

CASES = [(name, options) for name, method in METHODS.items() for options in conformance.option_sets(method)]


def test_every_registered_method_has_a_reference():
    assert set(REFERENCES) == set(METHODS)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return conformance.build_pool(tmp_path_factory.mktemp("conformance") / "pool")


@pytest.mark.parametrize(("name", "options"), CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_method_conforms(pool, tmp_path, name, options):
    conformance.check_method(name, REFERENCES[name], pool, tmp_path, options)


def test_a_wrong_reference_is_caught(pool, tmp_path):
    """The suite can fail: a reference that mixes up the inputs' order is named in the error."""

    def reversed_inputs(states, base, weights, params):
        return REFERENCES["linear"](states[::-1], base, weights, params)

    with pytest.raises(
        AssertionError, match="method 'linear' with its defaults: streaming merge != reference"
    ):
        conformance.check_method("linear", reversed_inputs, pool, tmp_path)
