"""Summed log-probabilities of continuation tokens, one forward pass per batch.

Used by the ``choice`` (one sequence per option), ``loglikelihood`` and ``perplexity``
kinds. Sequences are ``context + continuation``, left-padded, so every row's
continuation ends at the last column and only the last ``max(n) + 1`` positions need
logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hf_recycle._score.batching import Batch


def continuation_logprobs(
    model, batch: Batch, num_tokens: Sequence[int], logits_to_keep: bool = True
) -> list[float]:
    """Sum of ``log p(token | everything before it)`` over each row's last ``num_tokens[row]`` tokens.

    Args:
        model: A causal LM (in eval mode, under ``torch.inference_mode``).
        batch: ``context + continuation`` sequences, left-padded, on the model's device.
        num_tokens: Continuation length of each row (>= 1, shorter than the row).
        logits_to_keep: Whether the model accepts ``logits_to_keep``.

    Returns:
        One float per row (log-softmax taken in float32).
    """
    k = max(num_tokens)
    kwargs = {"logits_to_keep": k + 1} if logits_to_keep else {}
    logits = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
        **kwargs,
    ).logits
    logits = logits[:, -(k + 1) : -1, :].float()
    labels = batch.input_ids[:, -k:]
    token_logprobs = torch.log_softmax(logits, dim=-1).gather(-1, labels[..., None]).squeeze(-1)
    counts = torch.tensor(list(num_tokens), device=labels.device)
    scored = torch.arange(k, device=labels.device)[None, :] >= (k - counts)[:, None]
    return torch.where(scored, token_logprobs, torch.zeros_like(token_logprobs)).sum(-1).tolist()
