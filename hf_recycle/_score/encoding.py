"""Tokenize a task's examples once: prompts for ``generate``, (context, continuation) pairs otherwise."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from hf_recycle.errors import TaskError

logger = logging.getLogger(__name__)

# Tokenizers report a huge ``model_max_length`` when they do not know it.
_UNKNOWN_LENGTH = 10**7


def pad_token_id(tokenizer, task: str = "?") -> int:
    """The id to pad with: the pad token, else EOS, else 0 (padding is masked out, so any id works)."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    fallback = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    logger.debug("task '%s': tokenizer has no pad token; padding with id %d (masked out)", task, fallback)
    return int(fallback)


def tokenizer_length_limit(tokenizer) -> int | None:
    """The tokenizer's ``model_max_length``, or None when it is unset (a huge placeholder)."""
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < _UNKNOWN_LENGTH else None


def format_prompts(tokenizer, prompts: Sequence[str], chat_template: bool, task: str) -> list[str]:
    """The prompts as the model sees them: wrapped in the chat template as a user turn when asked."""
    if not chat_template:
        return list(prompts)
    if not getattr(tokenizer, "chat_template", None):
        raise TaskError(
            f"task '{task}': chat_template is true but the tokenizer has no chat template: "
            "set chat_template: false or use a tokenizer that has one"
        )
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]


def encode_prompts(tokenizer, texts: Sequence[str], chat_template: bool, task: str) -> list[list[int]]:
    """Token ids of each prompt (special tokens as the tokenizer adds them, none on chat-formatted text)."""
    ids = tokenizer(list(texts), add_special_tokens=not chat_template)["input_ids"]
    for i, seq in enumerate(ids):
        if not seq:
            raise TaskError(
                f"task '{task}': the prompt of example {i} is empty and the tokenizer adds no BOS token: "
                "give the prompt some text"
            )
    return [list(seq) for seq in ids]


def encode_continuations(
    tokenizer,
    contexts: Sequence[str],
    continuations: Sequence[str],
    chat_template: bool,
    task: str,
) -> list[tuple[list[int], list[int]]]:
    """``(context_ids, continuation_ids)`` per pair, split the way the text splits.

    The continuation is tokenized together with its context (``ids(context +
    continuation)`` minus the context's ids) so that tokens spanning the boundary are
    the model's own; when the joint tokenization does not begin with the context's,
    the continuation is tokenized alone. An empty context gets the BOS token, or
    (without one) the continuation's first token.

    Raises:
        TaskError: A continuation renders to no tokens.
    """
    special = not chat_template
    ctx_ids = tokenizer(list(contexts), add_special_tokens=special)["input_ids"]
    whole_ids = tokenizer(
        [c + t for c, t in zip(contexts, continuations, strict=True)], add_special_tokens=special
    )["input_ids"]
    pairs: list[tuple[list[int], list[int]]] = []
    for i, (ctx, whole, text) in enumerate(zip(ctx_ids, whole_ids, continuations, strict=True)):
        ctx, whole = list(ctx), list(whole)
        if whole[: len(ctx)] == ctx:
            cont = whole[len(ctx) :]
        else:
            cont = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if not ctx:
            if tokenizer.bos_token_id is not None:
                ctx = [int(tokenizer.bos_token_id)]
            else:
                ctx, cont = cont[:1], cont[1:]
        if not cont:
            raise TaskError(
                f"task '{task}': the target of example {i} ({text!r}) has no tokens to score "
                "after the prompt: check the target template"
            )
        pairs.append((ctx, cont))
    return pairs
