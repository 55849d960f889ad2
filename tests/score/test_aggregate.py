"""`hf-recycle score`'s mean and the search's objective are one computation."""

from __future__ import annotations

import types

import pytest

from hf_recycle._score.aggregate import oriented_mean
from hf_recycle._score.scorer import TaskResult, macro_average
from hf_recycle._search.objective import macro_mean


def _result(name, value, higher):
    return TaskResult(name=name, value=value, per_example=[value], higher_is_better=higher)


def test_score_mean_equals_search_objective():
    tasks = [("acc", 0.75, 2.0, True), ("ppl", 12.5, 1.0, False), ("em", 0.25, 0.5, True)]
    results = {n: _result(n, v, h) for n, v, _, h in tasks}
    weights = {n: w for n, _, w, _ in tasks}
    scorers = [types.SimpleNamespace(name=n, weight=w, higher_is_better=h) for n, _, w, h in tasks]
    want = (2.0 * 0.75 - 1.0 * 12.5 + 0.5 * 0.25) / 3.5
    assert macro_average(results, weights) == pytest.approx(want, abs=1e-12)
    assert macro_mean({n: v for n, v, _, _ in tasks}, scorers) == pytest.approx(want, abs=1e-12)


def test_oriented_mean_refuses_nothing_and_zero_weights():
    with pytest.raises(ValueError, match="no task scores"):
        oriented_mean([])
    with pytest.raises(ValueError, match="sum to a positive number"):
        oriented_mean([(1.0, 0.0, True)])
