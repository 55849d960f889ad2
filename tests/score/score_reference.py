"""Helpers of the scoring tests: data files, tasks and tiny models shared by several test modules,
and independent one-example-at-a-time references computed with plain transformers (no hf-recycle
code on the model path)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from hf_recycle._score.generate import cut_at_stop
from hf_recycle.testing import models


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def jsonl_task(folder: Path, rows: list[dict], *, name: str = "t", kind: str = "generate", **fields):
    """A :class:`TaskSpec` over ``rows``, written to ``folder/<name>.jsonl`` (relative to ``folder``)."""
    from hf_recycle._score.tasks import TaskSpec

    write_jsonl(folder / f"{name}.jsonl", rows)
    return TaskSpec(name=name, data={"path": "json", "data_files": f"{name}.jsonl"}, kind=kind, **fields)


def random_prompts(n: int, seed: int = 0, lengths=(1, 2, 5, 17, 40, 90, 150)) -> list[str]:
    """Prompts of very different lengths over a small alphabet."""
    rng = random.Random(seed)
    alphabet = "abcdefghij0123456789+= "
    return ["".join(rng.choice(alphabet) for _ in range(rng.choice(lengths))) for _ in range(n)]


def reference_generate(model, tokenizer, prompt: str | list[int], max_new_tokens: int, stop=()) -> str:
    """One example through ``model.generate`` (greedy, no padding), cut before its first EOS token,
    decoded without special tokens, cut at stop strings, stripped."""
    ids = tokenizer(prompt)["input_ids"] if isinstance(prompt, str) else prompt
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    new = out[0, input_ids.shape[1] :].tolist()
    eos = model.generation_config.eos_token_id
    eos = set(eos) if isinstance(eos, list) else {eos}
    ends = [i for i, t in enumerate(new) if t in eos]
    text = tokenizer.decode(new[: ends[0]] if ends else new, skip_special_tokens=True)
    return cut_at_stop(text, stop).strip()


def reference_logprob(model, tokenizer, prompt: str, continuation: str) -> tuple[float, int]:
    """Summed log-probability of ``continuation`` after ``prompt``: one unpadded forward, full logits."""
    context = tokenizer(prompt)["input_ids"]
    ids = tokenizer(prompt + continuation)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    total = sum(logprobs[t - 1, ids[t]].item() for t in range(len(context), len(ids)))
    return total, len(ids) - len(context)


# The generate tasks (test_generate.py, test_batching.py): targets are the reference continuations.
MAX_NEW = 10
STOP = ("=", "ab")


def tiny_model(arch: str):
    """A tiny random ``llama`` or ``gpt2`` model (seed 11)."""
    config = models.tiny_llama_config() if arch == "llama" else models.tiny_gpt2_config()
    model = models.build_model(config, seed=11)
    return model


def frequent_eos(model, tokenizer):
    """Make several common characters end generation, so rows stop at different steps."""
    model.generation_config.eos_token_id = [2, *tokenizer.convert_tokens_to_ids(list("bdfhj13579"))]
    return model


def generate_task(tmp_path, tokenizer, model, n=24, seed=0, stop=STOP, **spec_kw):
    """A generate task whose targets are the reference continuations for even examples only."""
    prompts = random_prompts(n, seed=seed)
    refs = [reference_generate(model, tokenizer, p, MAX_NEW, stop) for p in prompts]
    targets = [r if i % 2 == 0 else r + "#" for i, r in enumerate(refs)]
    rows = [{"q": p, "a": " " + t} for p, t in zip(prompts, targets, strict=True)]
    spec = jsonl_task(
        tmp_path,
        rows,
        name="gen",
        prompt="{q}",
        target="{a}",
        max_new_tokens=MAX_NEW,
        stop=list(stop),
        **spec_kw,
    )
    return spec, prompts, refs


# The choice and likelihood tasks (test_likelihood.py, test_batching.py, test_data.py).
def choice_rows(n: int, seed: int) -> list[dict]:
    """Rows ``{"q", "options", "label"}`` with 2 to 4 distinct options of different lengths."""
    rng = random.Random(seed)
    prompts = random_prompts(n, seed=seed)
    rows = []
    for p in prompts:
        options = [
            "".join(rng.choice("klmnopqrs ") for _ in range(rng.choice((1, 3, 12))))
            for _ in range(rng.choice((2, 4)))
        ]
        options = list(dict.fromkeys(options))
        if len(options) < 2:
            options.append("zz")
        rows.append({"q": p, "options": options, "label": rng.randrange(len(options))})
    return rows


def text_rows(n: int, seed: int) -> list[dict]:
    """Rows ``{"q", "a"}`` with continuations of 1, 4 or 30 characters."""
    rng = random.Random(seed)
    return [
        {"q": p, "a": "".join(rng.choice("xyz01 ") for _ in range(rng.choice((1, 4, 30))))}
        for p in random_prompts(n, seed=seed)
    ]


def choice_task(folder, rows, **fields):
    """A ``choice`` task named ``mc`` over ``rows`` (options in the ``options`` field)."""
    return jsonl_task(folder, rows, name="mc", kind="choice", options="options", **fields)


# Bad task input (test_errors.py, test_data.py): the ``data_dir`` fixture (conftest.py) holds d.jsonl.
def addition_spec(**kw):
    """The ``addition`` task over ``d.jsonl``, with ``kw`` overriding its fields."""
    from hf_recycle._score.tasks import TaskSpec

    base = {
        "name": "addition",
        "data": {"path": "json", "data_files": "d.jsonl"},
        "prompt": "{question}=",
        "target": "{answer}",
    }
    return TaskSpec.model_validate({**base, **kw})


def scorer_error(spec, data_dir, tokenizer, split="search") -> str:
    """The message of the :class:`TaskError` that building ``spec``'s scorer raises."""
    from hf_recycle._score.scorer import TaskScorer
    from hf_recycle.errors import TaskError

    with pytest.raises(TaskError) as info:
        TaskScorer(spec, tokenizer, split=split, base_dir=data_dir)
    return str(info.value)
