"""Batching shared by every scorer kind: length-sorted batch plans, left padding, model facts.

Nothing here depends on a model's weights, so plans and padded tensors can be built
once per task and reused for every candidate.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# ``batch_size: auto``: at most this many sequences and padded tokens per batch.
AUTO_LIMITS = {"cpu": (64, 16_384), "cuda": (512, 262_144)}

_ACCEPTS_LOGITS_TO_KEEP: dict[type, bool] = {}


@dataclass(frozen=True)
class Batch:
    """A left-padded batch of token sequences.

    Attributes:
        items: Indices of the batch's rows in the caller's item list.
        input_ids: ``(rows, length)`` token ids, padding on the left.
        attention_mask: 1 on real tokens, 0 on padding.
        position_ids: Positions counted from each row's first real token (0 on padding).
    """

    items: tuple[int, ...]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor


def left_pad(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, ...]:
    """Left-pad ``sequences`` into ``(input_ids, attention_mask, position_ids)`` on ``device``."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, length - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, length - len(seq) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    return ids.to(device), mask.to(device), positions.to(device)


def plan_batches(
    lengths: Sequence[int], batch_size: int | str, device: torch.device, token_budget: int | None = None
) -> list[list[int]]:
    """Group item indices into batches of similar length, longest first.

    Args:
        lengths: Padded-length cost of each item (prompt tokens plus tokens to generate).
        batch_size: Sequences per batch, or ``"auto"`` to bound sequences and padded
            tokens per batch by :data:`AUTO_LIMITS` (or ``token_budget``).
        device: Where the batches run (picks the auto limits).
        token_budget: Overrides the auto token limit (the OOM back-off lowers it).

    Returns:
        Lists of item indices; within a batch, indices are in decreasing length.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    if batch_size != "auto":
        size = int(batch_size)
        return [order[i : i + size] for i in range(0, len(order), size)]
    max_rows, max_tokens = AUTO_LIMITS["cuda" if device.type == "cuda" else "cpu"]
    if token_budget is not None:
        max_tokens = token_budget
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (len(current) >= max_rows or (len(current) + 1) * longest > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def model_device(model) -> torch.device:
    """The device of the model's first parameter."""
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


def model_context_length(model, tokenizer_limit: int | None = None) -> int | None:
    """The most tokens the model attends to (its position limit), capped by the tokenizer's limit."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    limits = []
    for attr in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            limits.append(value)
            break
    if tokenizer_limit:
        limits.append(tokenizer_limit)
    return min(limits) if limits else None


def accepts_logits_to_keep(model) -> bool:
    """Whether ``model.forward`` takes ``logits_to_keep`` (computes logits for the last k positions only)."""
    cls = type(model)
    if cls not in _ACCEPTS_LOGITS_TO_KEEP:
        _ACCEPTS_LOGITS_TO_KEEP[cls] = "logits_to_keep" in inspect.signature(model.forward).parameters
    return _ACCEPTS_LOGITS_TO_KEEP[cls]


def eos_token_ids(model, tokenizer) -> list[int]:
    """End-of-sequence ids, as ``model.generate`` sees them (generation config, then config, then tokenizer)."""
    eos = None
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        eos = generation_config.eos_token_id
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]
