"""Bundled evaluate modules: offline, fast, equal to hand computations; user modules by path."""

from __future__ import annotations

import socket
import time

import pytest

from hf_recycle._score.metric import BUNDLED_METRICS, TaskMetric, load_evaluate_module, metric_location
from hf_recycle.errors import TaskError


def test_bundled_metrics_load_offline_and_fast(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a bundled metric tried the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.delenv("HF_EVALUATE_OFFLINE", raising=False)
    import evaluate  # noqa: F401  - the import itself is slow; time only the loads

    for name in BUNDLED_METRICS:
        start = time.perf_counter()
        module = load_evaluate_module(name, task="t")
        assert time.perf_counter() - start < 2.0
        assert metric_location(name).endswith(f"metrics/{name}/{name}.py")
        assert module is load_evaluate_module(name, task="t")  # cached per process


def test_bundled_scripts_share_one_base_and_evaluate_picks_their_own_class():
    from hf_recycle._score.bundled_metric import PerExampleMetric

    for name, cls in [("exact_match", "ExactMatch"), ("accuracy", "Accuracy"), ("f1", "TokenF1")]:
        module = load_evaluate_module(name, task="t")
        assert isinstance(module, PerExampleMetric) and type(module).__name__ == cls
        assert module.inputs_description.strip().startswith("Args:")
    with pytest.raises(TypeError, match="abstract"):
        PerExampleMetric()


def test_exact_match_by_hand():
    metric = TaskMetric("exact_match", "t")
    preds, refs = ["4", "5", " 6", "abc"], ["4", "6", "6", "abc"]
    value, per = metric.compute(preds, refs)
    assert per == [1.0, 0.0, 0.0, 1.0] and value == 0.5


def test_accuracy_by_hand():
    value, per = TaskMetric("accuracy", "t").compute([0, 1, 2, 1, 3], [0, 1, 1, 1, 0])
    assert per == [1.0, 1.0, 0.0, 1.0, 0.0] and value == pytest.approx(0.6)


def test_f1_by_hand():
    # "the cat sat" vs "a cat sat down": 2 shared tokens, P = 2/3, R = 2/4, F1 = 4/7.
    value, per = TaskMetric("f1", "t").compute(
        ["the cat sat", "Dog", "", "x y"], ["a cat sat down", "dog", "", "z"]
    )
    assert per == pytest.approx([4 / 7, 1.0, 1.0, 0.0])
    assert value == pytest.approx((4 / 7 + 2) / 4)


def test_unknown_metric_names_metric_and_task():
    with pytest.raises(TaskError, match=r"task 'qa': unknown metric 'no_such_metric_xyz'"):
        TaskMetric("no_such_metric_xyz", "qa")


USER_METRIC = """
import datasets
import evaluate


class LengthGap(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="mean absolute length difference",
            citation="",
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        gaps = [abs(len(p) - len(r)) for p, r in zip(predictions, references)]
        return {"length_gap": sum(gaps) / len(gaps), "count": len(gaps)}
"""


def test_user_metric_by_path(tmp_path):
    folder = tmp_path / "length_gap"
    folder.mkdir()
    (folder / "length_gap.py").write_text(USER_METRIC)
    # Relative to the recipe folder; the key equal to the module name is the score.
    metric = TaskMetric("length_gap", "t", base_dir=tmp_path)
    value, per = metric.compute(["ab", "abcd", ""], ["a", "a", "abc"])
    assert per == [1.0, 3.0, 3.0] and value == pytest.approx(7 / 3)
    assert TaskMetric(str(folder / "length_gap.py"), "t", key="count").compute(["a"], ["b"]) == (1.0, [1.0])
    with pytest.raises(TaskError, match="returned no key 'nope'"):
        TaskMetric(str(folder), "t", key="nope").compute(["a"], ["b"])
