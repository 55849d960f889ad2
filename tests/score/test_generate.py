"""``generate`` tasks: the batched scorer agrees exactly with one-at-a-time ``model.generate``."""

from __future__ import annotations

import pytest
import torch
from score_reference import (
    MAX_NEW,
    STOP,
    frequent_eos,
    generate_task,
    jsonl_task,
    random_prompts,
    reference_generate,
    tiny_model,
    write_jsonl,
)

from hf_recycle._score.scorer import TaskScorer
from hf_recycle._score.tasks import TaskSpec
from hf_recycle.testing import models


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generate_matches_one_at_a_time_generate(tmp_path, char_tokenizer, arch):
    model = frequent_eos(tiny_model(arch), char_tokenizer)
    spec, prompts, refs = generate_task(tmp_path, char_tokenizer, model)
    scorer = TaskScorer(spec, char_tokenizer, base_dir=tmp_path)
    result = scorer.score(model)

    assert list(result.predictions) == refs
    # Rows really differ: some stopped early (EOS or stop string), some ran to max_new_tokens.
    lengths = {len(r) for r in refs}
    assert len(lengths) > 2 and max(lengths) >= MAX_NEW - 2
    # exact_match by hand: even examples match (target == reference), odd ones do not.
    expected = [1.0 if i % 2 == 0 else 0.0 for i in range(len(prompts))]
    assert result.per_example == tuple(expected)
    assert result.value == sum(expected) / len(expected)
    assert result.higher_is_better and result.name == "gen"


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_no_deprecation_warning_per_decoding_step(tmp_path, char_tokenizer, arch):
    """The KV cache goes in under the name the model's forward takes (recent transformers renamed
    ``past_key_values`` to ``cache`` and warns at every call that uses the old name): a search
    would print one warning per generated token."""
    import warnings

    model = frequent_eos(tiny_model(arch), char_tokenizer)
    spec, _, refs = generate_task(tmp_path, char_tokenizer, model, n=6, seed=4)
    scorer = TaskScorer(spec, char_tokenizer, base_dir=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = scorer.score(model)
    assert list(result.predictions) == refs
    assert not [w for w in caught if "past_key_values" in str(w.message)]


def test_weights_changed_in_place_are_seen(tmp_path, char_tokenizer):
    """The search writes new weights into the same model object: nothing weight-dependent is cached."""
    model = frequent_eos(tiny_model("llama"), char_tokenizer)
    spec, prompts, _ = generate_task(tmp_path, char_tokenizer, model, n=8, seed=2)
    scorer = TaskScorer(spec, char_tokenizer, base_dir=tmp_path)
    before = scorer.score(model)
    models.perturb(model, 0.5, seed=5)
    after = scorer.score(model)
    expected = [reference_generate(model, char_tokenizer, p, MAX_NEW, STOP) for p in prompts]
    assert list(after.predictions) == expected
    assert list(after.predictions) != list(before.predictions)


def test_model_mode_is_restored(tmp_path, char_tokenizer):
    model = tiny_model("llama")
    spec, _, _ = generate_task(tmp_path, char_tokenizer, model, n=3)
    scorer = TaskScorer(spec, char_tokenizer, base_dir=tmp_path)
    model.train()
    scorer.score(model)
    assert model.training
    model.eval()


def test_tokenizer_without_pad_token(tmp_path, char_tokenizer, llama_model):
    spec, _, refs = generate_task(tmp_path, char_tokenizer, llama_model, n=10, seed=3)
    no_pad = models.build_char_tokenizer()
    no_pad.pad_token = None
    assert no_pad.pad_token_id is None
    result = TaskScorer(spec, no_pad, base_dir=tmp_path).score(llama_model)
    assert list(result.predictions) == refs


def test_long_prompts_truncated_from_the_left(tmp_path, char_tokenizer, caplog):
    model = models.build_model(models.tiny_llama_config(max_position_embeddings=48), seed=4)
    prompts = random_prompts(6, seed=4, lengths=(5, 30, 100))
    assert any(len(p) > 48 for p in prompts)
    write_jsonl(tmp_path / "long.jsonl", [{"q": p, "a": "x"} for p in prompts])
    spec = TaskSpec(  # an absolute data_files path, and no base_dir
        name="long",
        data={"path": "json", "data_files": str(tmp_path / "long.jsonl")},
        prompt="{q}",
        target="{a}",
        max_new_tokens=8,
    )
    with caplog.at_level("WARNING", logger="hf_recycle._score"):
        result = TaskScorer(spec, char_tokenizer).score(model)
    assert "truncated from the left" in caplog.text and "'long'" in caplog.text
    room = 48 - 8
    expected = [
        reference_generate(model, char_tokenizer, char_tokenizer(p)["input_ids"][-room:], 8) for p in prompts
    ]
    assert list(result.predictions) == expected


def test_chat_template_wraps_the_prompt(tmp_path, llama_model):
    tokenizer = models.build_char_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['content'] }}>{% endfor %}{% if add_generation_prompt %}:{% endif %}"
    )
    prompts = random_prompts(4, seed=5, lengths=(3, 20))
    rows = [{"q": p, "a": "x"} for p in prompts]
    spec = jsonl_task(
        tmp_path, rows, name="chat", prompt="{q}", target="{a}", chat_template=True, max_new_tokens=6
    )
    result = TaskScorer(spec, tokenizer, base_dir=tmp_path).score(llama_model)
    assert list(result.predictions) == [
        reference_generate(llama_model, tokenizer, f"<{p}>:", 6) for p in prompts
    ]


def test_inference_runs_without_grad(tmp_path, char_tokenizer, llama_model):
    spec, _, _ = generate_task(tmp_path, char_tokenizer, llama_model, n=2)
    scorer = TaskScorer(spec, char_tokenizer, base_dir=tmp_path)
    torch.set_grad_enabled(True)
    scorer.score(llama_model)
    assert all(p.grad is None for p in llama_model.parameters())
