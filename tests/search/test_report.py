import numpy as np
import pytest

from hf_recycle._search.report import paired_bootstrap


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


def _results(with_every: bool):
    comp = {"difference": 0.25, "ci_low": 0.125, "ci_high": 0.5, "confidence": 0.95, "n_boot": 100}
    results = {
        "name": "r",
        "trials": 9,
        "study": {"sampler": "cmaes", "objective": "mean"},
        "space": {"weights": "simplex", "granularity": "model"},
        "merge": {"method": "linear"},
        "tasks": [{"name": "t"}],
        "checkpoints": [{"spec": "a"}, {"spec": "b"}],
        "winner": {
            "trial": 7,
            "weights": [0.5, 0.5],
            "search": {"t": 1.0, "mean": 1.0},
            "test": {"t": 0.5, "mean": 0.5},
        },
        "baselines": {},
        "comparison": {"baseline": "greedy_soup", "chosen_by": "search mean", **comp, "p_not_better": 0.01},
    }
    if with_every:
        results["comparisons"] = {
            "uniform": {
                **comp,
                "difference": -0.0625,
                "ci_low": -0.25,
                "ci_high": 0.125,
                "p_not_better": 0.75,
            },
            "greedy_soup": {**comp, "p_not_better": 0.01},
        }
    return results


def test_summary_and_markdown_list_every_baseline():
    from hf_recycle._search.report import render_markdown, summary_text

    results = _results(with_every=True)
    lines = summary_text(results).splitlines()
    assert lines[0] == "9 complete trials; winner (trial 7): search mean 1, test mean 0.5"
    assert lines[1:] == [
        "vs uniform on test: -0.0625 [-0.25, +0.125] (95% CI)",
        "vs greedy_soup on test (best on search): +0.25 [+0.125, +0.5] (95% CI)",
    ]
    md = render_markdown(results)
    assert "| uniform | -0.0625 | 95% [-0.25, +0.125] | 0.75 |" in md
    assert "| greedy_soup (best on search) | +0.25 | 95% [+0.125, +0.5] | 0.01 |" in md


def test_results_without_per_baseline_comparisons_still_report_the_chosen_one():
    from hf_recycle._search.report import summary_text, versus_baselines

    results = _results(with_every=False)
    assert [(name, chosen) for name, _, chosen in versus_baselines(results)] == [("greedy_soup", True)]
    assert summary_text(results).splitlines()[1].startswith("vs greedy_soup on test (best on search): +0.25")
    no_test = {
        **results,
        "comparison": {"baseline": "uniform", "chosen_by": "search mean"},
        "comparisons": None,
    }
    no_test["winner"] = {**results["winner"], "test": None}
    assert versus_baselines(no_test) == []
    assert summary_text(no_test) == "9 complete trials; winner (trial 7): search mean 1"
