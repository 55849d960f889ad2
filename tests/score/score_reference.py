"""Helpers of the scoring tests: data files and independent one-example-at-a-time references
computed with plain transformers (no hf-recycle code on the model path)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from hf_recycle.score.generate import cut_at_stop


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def jsonl_task(folder: Path, rows: list[dict], *, name: str = "t", kind: str = "generate", **fields):
    """A :class:`TaskSpec` over ``rows``, written to ``folder/<name>.jsonl`` (relative to ``folder``)."""
    from hf_recycle.score.tasks import TaskSpec

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
