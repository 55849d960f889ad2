import numpy as np
import pytest

from hf_recycle.search.report import paired_bootstrap


def test_constant_difference_has_a_degenerate_interval():
    a = {"t": [0.6, 0.7, 0.9]}
    b = {"t": [0.5, 0.6, 0.8]}
    out = paired_bootstrap(a, b, {"t": 1.0}, {"t": True}, n_boot=500)
    assert out["difference"] == pytest.approx(0.1)
    assert out["ci_low"] == pytest.approx(0.1) and out["ci_high"] == pytest.approx(0.1)
    assert out["p_not_better"] == 0.0


def test_bootstrap_distribution_matches_enumeration():
    # differences d = [0, 1]: a resample of 2 has mean 0, 0.5, 1 with probability 1/4, 1/2, 1/4
    a = {"t": [1.0, 1.0]}
    b = {"t": [1.0, 0.0]}
    out = paired_bootstrap(a, b, {"t": 1.0}, {"t": True}, n_boot=20000, seed=3, return_samples=True)
    samples = out["samples"]
    assert out["difference"] == pytest.approx(0.5)
    for value, prob in [(0.0, 0.25), (0.5, 0.5), (1.0, 0.25)]:
        assert np.mean(np.isclose(samples, value)) == pytest.approx(prob, abs=0.015)
    assert out["ci_low"] == 0.0 and out["ci_high"] == 1.0
    assert out["p_not_better"] == pytest.approx(0.25, abs=0.015)


def test_direction_and_task_weights_apply():
    # task u (lower is better): a is 2 lower -> +2 oriented; task v: a is 1 higher; weights 1 and 3
    a = {"u": [1.0, 1.0], "v": [2.0, 2.0]}
    b = {"u": [3.0, 3.0], "v": [1.0, 1.0]}
    out = paired_bootstrap(a, b, {"u": 1.0, "v": 3.0}, {"u": False, "v": True}, n_boot=100)
    assert out["difference"] == pytest.approx((1 * 2 + 3 * 1) / 4)


def test_unpaired_scores_are_refused():
    with pytest.raises(ValueError, match="same non-empty examples"):
        paired_bootstrap({"t": [1.0]}, {"t": [1.0, 2.0]}, {"t": 1}, {"t": True})
