"""The scoring-engine extension point: registry, contract, and the hf engine against plain forwards."""

from __future__ import annotations

import subprocess
import sys

import pytest
from score_reference import jsonl_task, reference_logprob, text_rows

from hf_recycle._score.engines import ENGINES, ScoringEngine, as_engine, get_engine
from hf_recycle._score.engines.transformers import TransformersEngine
from hf_recycle.errors import TaskError


def test_registry_finds_the_engines_without_torch():
    assert ENGINES["hf"] is TransformersEngine and list(ENGINES)[:2] == ["hf", "vllm"]
    with pytest.raises(TaskError, match="unknown scoring engine 'vllm2': use one of hf, vllm"):
        get_engine("vllm2")
    code = "import sys, hf_recycle._score.engines; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_transformers_engine_scores_per_example_against_plain_forwards(tmp_path, char_tokenizer, llama_model):
    rows = text_rows(12, seed=4)
    ll = jsonl_task(tmp_path, rows, name="ll", kind="loglikelihood", prompt="{q}|", target="{a}")
    ppl = ll.model_copy(update={"name": "ppl", "kind": "perplexity", "weight": 2.0})
    engine = get_engine("hf").build(char_tokenizer, [ll, ppl], "search", tmp_path)
    assert isinstance(engine, ScoringEngine) and as_engine(engine) is engine
    assert [(t.name, t.weight, t.higher_is_better, t.num_examples) for t in engine.tasks] == [
        ("ll", 1.0, True, 12),
        ("ppl", 2.0, False, 12),
    ]
    refs = [reference_logprob(llama_model, char_tokenizer, r["q"] + "|", r["a"])[0] for r in rows]
    full = engine.score(llama_model)
    assert list(full) == ["ll", "ppl"]
    assert full["ll"].per_example == pytest.approx(refs, rel=1e-5, abs=1e-5)

    # a quarter first (at least one example per task), then the rest: the same as all at once
    part = engine.score(llama_model, limit_fraction=0.25)
    assert len(part["ll"].per_example) == 3
    rest = engine.score(llama_model, resume=part)
    assert rest["ll"].per_example == pytest.approx(full["ll"].per_example, rel=1e-6)
    assert rest["ppl"].value == pytest.approx(full["ppl"].value, rel=1e-6)
    assert len(engine.score(llama_model, limit=5)["ppl"].per_example) == 5
    with pytest.raises(ValueError, match="limit or limit_fraction, not both"):
        engine.score(llama_model, limit=2, limit_fraction=0.5)
