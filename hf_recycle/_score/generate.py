"""Batched greedy generation with a KV cache, left padding and stop strings.

Our own loop rather than ``model.generate``: it skips the generation config's logits
processors (scoring is greedy by definition), needs no per-call setup, stops a batch as
soon as every row has hit EOS or a stop string, and gives the same tokens as
``model.generate(do_sample=False)`` run one example at a time (the tests check this).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch

from hf_recycle._score.batching import Batch


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest occurrence of any stop string."""
    end = len(text)
    for s in stop:
        pos = text.find(s)
        if pos != -1:
            end = min(end, pos)
    return text[:end]


def cache_argument(model) -> str:
    """The name under which ``model``'s forward takes the KV cache: ``cache`` in recent transformers
    (which deprecates ``past_key_values`` with a warning per call), else ``past_key_values``."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return out.past_key_values if cache is None else cache


def greedy_generate(
    model,
    batch: Batch,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    pad_id: int,
    stop: Sequence[str] = (),
    decode: Callable[[list[int]], str] | None = None,
    logits_to_keep: bool = True,
) -> list[list[int]]:
    """Greedy continuations of a left-padded batch.

    Args:
        model: A causal LM (in eval mode, under ``torch.inference_mode``).
        batch: The prompts, left-padded, on the model's device.
        max_new_tokens: The most tokens generated per row.
        eos_ids: Token ids that end a row (not included in its output).
        pad_id: Token fed to rows that have finished; it only keeps the batch
            rectangular, as in ``model.generate``.
        stop: Strings that end a row once its decoded continuation contains one.
        decode: Token ids -> text, needed when ``stop`` is given; it must decode as the
            final continuation is decoded (``skip_special_tokens=True``).
        logits_to_keep: Whether the model accepts ``logits_to_keep`` (saves computing
            logits at every prompt position).

    Returns:
        Per row, the generated token ids up to (excluding) the first EOS.
    """
    input_ids, attention_mask, position_ids = batch.input_ids, batch.attention_mask, batch.position_ids
    rows = input_ids.shape[0]
    device = input_ids.device
    keep = {"logits_to_keep": 1} if logits_to_keep else {}
    cache_name = cache_argument(model)
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    generated: list[list[int]] = [[] for _ in range(rows)]
    done = [False] * rows

    out = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True, **keep
    )
    cache = _cache_of(out)
    for step in range(max_new_tokens):
        next_tokens = out.logits[:, -1, :].argmax(dim=-1)
        next_tokens = torch.where(finished, torch.full_like(next_tokens, pad_id), next_tokens)
        if eos.numel():
            finished |= torch.isin(next_tokens, eos)
        tokens = next_tokens.tolist()
        hit_eos = finished.tolist()
        for row in range(rows):
            if done[row]:
                continue
            if hit_eos[row]:
                done[row] = True
                continue
            generated[row].append(tokens[row])
            if stop and any(s in decode(generated[row]) for s in stop):
                done[row] = True
        if all(done) or step == max_new_tokens - 1:
            break
        finished = torch.tensor(done, dtype=torch.bool, device=device)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((rows, 1))], dim=-1)
        position_ids = position_ids[:, -1:] + 1
        out = model(
            input_ids=next_tokens[:, None],
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **keep,
            **{cache_name: cache},
        )
        cache = _cache_of(out)
    return generated
