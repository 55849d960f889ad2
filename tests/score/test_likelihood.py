"""``choice``, ``loglikelihood`` and ``perplexity`` tasks against unpadded one-at-a-time forwards."""

from __future__ import annotations

import math

import pytest
import torch
from score_reference import choice_rows, choice_task, jsonl_task, reference_logprob, text_rows

from hf_recycle._score.scorer import TaskScorer
from hf_recycle.testing import models


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_choice_matches_one_at_a_time_forwards(tmp_path, char_tokenizer, llama_model, gpt2_model, arch):
    model = llama_model if arch == "llama" else gpt2_model
    rows = choice_rows(20, seed=7)
    spec = choice_task(tmp_path, rows, prompt="{q} ->", target="{label}")
    result = TaskScorer(spec, char_tokenizer, base_dir=tmp_path).score(model)

    expected_pred = []
    for row in rows:
        scores = [reference_logprob(model, char_tokenizer, row["q"] + " ->", o)[0] for o in row["options"]]
        expected_pred.append(max(range(len(scores)), key=scores.__getitem__))
    assert list(result.predictions) == expected_pred
    expected = [float(p == row["label"]) for p, row in zip(expected_pred, rows, strict=True)]
    assert result.per_example == tuple(expected)
    assert result.value == sum(expected) / len(expected)
    assert 0 < result.value < 1  # not a degenerate check


def test_loglikelihood_and_perplexity(tmp_path, char_tokenizer, llama_model):
    rows = text_rows(16, seed=9)
    ll = jsonl_task(tmp_path, rows, name="ll", kind="loglikelihood", prompt="{q}|", target="{a}")
    ppl = ll.model_copy(update={"name": "ppl", "kind": "perplexity"})
    ll_result = TaskScorer(ll, char_tokenizer, base_dir=tmp_path).score(llama_model)
    ppl_result = TaskScorer(ppl, char_tokenizer, base_dir=tmp_path).score(llama_model)

    refs = [reference_logprob(llama_model, char_tokenizer, r["q"] + "|", r["a"]) for r in rows]
    assert ll_result.per_example == pytest.approx([lp for lp, _ in refs], rel=1e-5, abs=1e-5)
    assert ll_result.value == pytest.approx(sum(lp for lp, _ in refs) / len(refs), rel=1e-5)
    assert ll_result.higher_is_better and not ppl_result.higher_is_better
    assert ppl_result.per_example == pytest.approx([math.exp(-lp / n) for lp, n in refs], rel=1e-5)
    corpus = math.exp(-sum(lp for lp, _ in refs) / sum(n for _, n in refs))
    assert ppl_result.value == pytest.approx(corpus, rel=1e-5)
    assert list(ppl_result.predictions) == [n for _, n in refs]


@pytest.mark.parametrize("with_bos", [True, False])
def test_perplexity_of_text_without_prompt(tmp_path, llama_model, with_bos):
    """An empty prompt: the text is scored after the BOS token, or without one from its second token."""
    texts = ["hello world", "ab"]
    spec = jsonl_task(tmp_path, [{"text": t} for t in texts], kind="perplexity", prompt="", target="{text}")
    tokenizer = models.build_char_tokenizer()
    if not with_bos:
        tokenizer.bos_token = None

    def reference(text: str) -> float:
        ids = tokenizer(text)["input_ids"]
        ids = [tokenizer.bos_token_id, *ids] if with_bos else ids
        with torch.no_grad():
            logprobs = torch.log_softmax(llama_model(torch.tensor([ids])).logits[0].float(), -1)
        lp = sum(logprobs[t - 1, ids[t]].item() for t in range(1, len(ids)))
        return math.exp(-lp / (len(ids) - 1))

    result = TaskScorer(spec, tokenizer, base_dir=tmp_path).score(llama_model)
    assert result.per_example == pytest.approx([reference(t) for t in texts], rel=1e-5)


def test_long_sequences_truncated_keep_the_target(tmp_path, char_tokenizer, caplog):
    model = models.build_model(models.tiny_llama_config(max_position_embeddings=32), seed=6)
    rows = [{"q": "a" * 10 + "b" * 40, "a": "xyz"}, {"q": "short", "a": "01"}]
    spec = jsonl_task(tmp_path, rows, kind="loglikelihood", prompt="{q}", target="{a}")
    with caplog.at_level("WARNING", logger="hf_recycle._score"):
        result = TaskScorer(spec, char_tokenizer, base_dir=tmp_path).score(model)
    assert "1 of 2 sequences" in caplog.text
    kept = (rows[0]["q"] + "xyz")[-32:]
    expected = reference_logprob(model, char_tokenizer, kept[:-3], "xyz")[0]
    assert result.per_example[0] == pytest.approx(expected, rel=1e-5)


def test_resume_runs_only_the_remaining_examples(tmp_path, char_tokenizer, gpt2_model):
    spec = jsonl_task(tmp_path, text_rows(10, seed=11), kind="loglikelihood", prompt="{q}", target="{a}")
    scorer = TaskScorer(spec, char_tokenizer, base_dir=tmp_path)
    first = scorer.score(gpt2_model, limit=4)
    seen = []
    hook = gpt2_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        scorer.score(gpt2_model, resume=first)
    finally:
        hook.remove()
    assert sum(seen) == 6  # 10 examples, 4 of them reused


def test_resume_from_another_scorer_or_a_longer_result_is_refused(tmp_path, char_tokenizer, gpt2_model):
    from hf_recycle.errors import TaskError

    spec = jsonl_task(tmp_path, text_rows(10, seed=12), kind="loglikelihood", prompt="{q}", target="{a}")
    scorer = TaskScorer(spec, char_tokenizer, base_dir=tmp_path)
    longer = scorer.score(gpt2_model, limit=6)
    with pytest.raises(TaskError, match="resume"):
        scorer.score(gpt2_model, limit=3, resume=longer)
    other = TaskScorer(spec.model_copy(update={"name": "other"}), char_tokenizer, base_dir=tmp_path)
    with pytest.raises(TaskError, match="resume"):
        scorer.score(gpt2_model, resume=other.score(gpt2_model, limit=2))
