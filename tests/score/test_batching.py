"""Batching (:mod:`hf_recycle._score.batching`), through the scorer: the batch size (fixed, one by
one or ``auto``) and the limit never change the scores of any task kind."""

from __future__ import annotations

import pytest
from score_reference import (
    choice_rows,
    choice_task,
    frequent_eos,
    generate_task,
    jsonl_task,
    text_rows,
    tiny_model,
)

from hf_recycle._score.scorer import TaskScorer


def test_generate_batch_size_and_limit_do_not_change_scores(tmp_path, char_tokenizer):
    model = frequent_eos(tiny_model("llama"), char_tokenizer)
    spec, _, refs = generate_task(tmp_path, char_tokenizer, model, n=12, seed=1)
    auto = TaskScorer(spec, char_tokenizer, base_dir=tmp_path).score(model)
    fixed = TaskScorer(spec.model_copy(update={"batch_size": 5}), char_tokenizer, base_dir=tmp_path)
    assert fixed.score(model) == auto
    first = fixed.score(model, limit=4)
    assert first.per_example == auto.per_example[:4]
    assert list(first.predictions) == refs[:4]
    assert fixed.score(model, limit=100).per_example == auto.per_example
    resumed = fixed.score(model, resume=first)  # the first 4 reused, the other 8 generated
    assert resumed == auto and resumed.predictions == auto.predictions


@pytest.mark.parametrize("kind", ["loglikelihood", "perplexity", "choice"])
def test_likelihood_batch_size_and_limit_do_not_change_scores(tmp_path, char_tokenizer, gpt2_model, kind):
    if kind == "choice":
        spec = choice_task(tmp_path, choice_rows(10, seed=10), prompt="{q}", target="{label}")
    else:
        spec = jsonl_task(tmp_path, text_rows(10, seed=10), kind=kind, prompt="{q}", target="{a}")
    auto = TaskScorer(spec, char_tokenizer, base_dir=tmp_path).score(gpt2_model)
    one_by_one = TaskScorer(spec.model_copy(update={"batch_size": 1}), char_tokenizer, base_dir=tmp_path)
    assert one_by_one.score(gpt2_model).per_example == pytest.approx(auto.per_example, rel=1e-5, abs=1e-5)
    scorer = TaskScorer(spec, char_tokenizer, base_dir=tmp_path)
    first = scorer.score(gpt2_model, limit=3)
    assert first.per_example == auto.per_example[:3]
    # resuming from the first 3 examples runs only the other 7 and gives the full result
    rest = scorer.score(gpt2_model, resume=first)
    assert rest.per_example == pytest.approx(auto.per_example, rel=1e-5, abs=1e-5)
    assert rest.value == pytest.approx(auto.value, rel=1e-5, abs=1e-5)
    assert rest.predictions == auto.predictions
    assert scorer.score(gpt2_model, limit=5, resume=first).per_example == pytest.approx(auto.per_example[:5])
