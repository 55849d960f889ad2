"""``lm_eval`` tasks through the ``vllm`` engine: lm-eval's vLLM model on the engine's own vLLM,
whose weights each candidate overwrites in place, against the ``hf`` engine (lm-eval's HFLM)."""

from __future__ import annotations

from pathlib import Path

import pytest
from vllm_support import VLLM_OPTIONS, build_vllm_pool, skip_without_vllm

skip_without_vllm()

from score_reference import jsonl_task, text_rows  # noqa: E402

from hf_recycle._score.api import load_model  # noqa: E402
from hf_recycle._score.engines import get_engine  # noqa: E402
from hf_recycle._score.tasks import TaskSpec  # noqa: E402

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "tests" / "data" / "lm_eval_tasks"  # the YAMLs name their data relative to REPO


def _lm_eval(name: str, task: str, metric: str, **lm_eval) -> TaskSpec:
    return TaskSpec.model_validate(
        {
            "name": name,
            "kind": "lm_eval",
            "lm_eval": {"task": task, "include_path": str(TASKS), **lm_eval},
            "metric": metric,
            "search_split": "docs[:8]",
            "test_split": "docs[8:]",
        }
    )


def test_lm_eval_tasks_through_vllm_equal_the_hf_engine(tmp_path_factory, monkeypatch):
    monkeypatch.chdir(REPO)
    base, ckpts = build_vllm_pool(tmp_path_factory.mktemp("lm-eval-vllm-pool"), seed=5)
    folder = tmp_path_factory.mktemp("lm-eval-vllm-tasks")
    specs = [
        _lm_eval("mc", "hfr_mc", "acc,none", num_fewshot=1),
        jsonl_task(
            folder, text_rows(6, seed=3), name="ll", kind="loglikelihood", prompt="{q}|", target="{a}"
        ),
        _lm_eval("gen", "hfr_gen", "chrf,none", num_fewshot=1),
    ]
    model, tokenizer = load_model(base, device="cpu", dtype="float32")
    other = load_model(ckpts[1], device="cpu", dtype="float32")[0]
    hf = get_engine("hf").build(tokenizer, specs, "search", folder)
    # as in a search: vLLM starts on dummy weights, every candidate's are pushed in place
    vllm = get_engine("vllm").build(
        tokenizer, specs, "search", folder, model_dir=base, load_weights=False, **VLLM_OPTIONS
    )
    try:
        answers = []
        for weights in (model, other):
            vllm.weights_changed(weights)
            ours, reference = vllm.score(weights), hf.score(weights)
            assert list(ours) == ["mc", "ll", "gen"]
            for name in ("mc", "gen"):
                assert ours[name].predictions == reference[name].predictions, name
                assert ours[name].per_example == pytest.approx(reference[name].per_example, abs=1e-9), name
                assert ours[name].value == pytest.approx(reference[name].value, abs=1e-9), name
            assert ours["ll"].per_example == pytest.approx(reference["ll"].per_example, rel=1e-4, abs=1e-4)
            answers.append(reference["mc"].predictions + reference["gen"].predictions)
            # the first documents, then the rest: the same as all at once
            part = vllm.score(weights, limit=3)
            assert vllm.score(weights, resume=part)["gen"] == ours["gen"]
        assert answers[0] != answers[1]  # the pushed weights changed what lm-eval's requests got
    finally:
        vllm.close()
