"""Every registered merge method: search candidate == streaming merge == independent reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from hf_recycle._merge.methods import METHODS
from hf_recycle.testing import conformance
from hf_recycle.testing.merge_reference import REFERENCES

CASES = [
    (name, options)
    for name, method in METHODS.items()
    if name in REFERENCES
    for options in conformance.option_sets(method)
]


def test_every_registered_method_is_checked_against_a_reference():
    """A built-in method has its reference in merge_reference; a method added since has its own
    test module calling ``conformance.check_method("<name>", ...)`` with its reference."""
    tests = "".join(p.read_text(encoding="utf-8") for p in Path(__file__).parent.glob("test_*.py"))
    unchecked = [n for n in METHODS if n not in REFERENCES and f'check_method("{n}"' not in tests]
    assert not unchecked, f"merge methods without a conformance test: {unchecked}"
    assert set(REFERENCES) <= set(METHODS)


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
