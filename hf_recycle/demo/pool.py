"""Train the demo's pool of checkpoints: one tiny Llama trunk, then branches with trade-offs.

A shared trunk is trained from scratch on an even mixture of the two tasks (the
``base`` of the demo repo, as a pre-trained model is the base of the paper's SFT and
RLHF variants). Branches continue from it with other data mixtures and learning
rates, like the checkpoints a real training effort leaves behind: each one gains on
the task its data favours and loses on the other, and most are saved mid-schedule
(constant learning rate), so each carries its own noise. Every branch shares the
trunk's lineage, so a linear merge of them is meaningful.

Training is plain PyTorch (AdamW, warmup then cosine decay, gradient clipping), on one
CPU thread with fixed seeds: the same plan gives the same weights on every run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from hf_recycle.demo.tasks import TrainingStream, mixture_of

logger = logging.getLogger(__name__)

MODEL_OVERRIDES: dict[str, Any] = {"hidden_size": 64, "intermediate_size": 128, "max_position_embeddings": 64}
BATCH_SIZE = 64


@dataclass(frozen=True)
class Stage:
    """One training stage: continue ``parent`` (or start from scratch) and save the result.

    Attributes:
        name: Name of the checkpoint this stage produces (the Hub branch it is published to).
        parent: Name of the stage it continues from; ``None`` starts from a random init.
        steps: Optimizer steps.
        lr: Peak learning rate.
        mixture: Share of each task in its data (task name -> share, summing to 1).
        final_lr: Learning rate at the last step, as a fraction of ``lr`` (cosine decay);
            1.0 keeps it constant after the warmup.
        warmup: Linear warmup steps.
        seed: Seed of its data stream and of dropout-free torch randomness.
        note: What the stage stands for, for the table and commit messages.
    """

    name: str
    parent: str | None
    steps: int
    lr: float
    mixture: dict[str, float] = field(default_factory=lambda: mixture_of(0.5))
    final_lr: float = 0.1
    warmup: int = 10
    seed: int = 0
    note: str = ""


# The pool: "step-0" is the shared trunk (also published as the repo's "base" branch), trained
# on an even mixture at a constant learning rate and saved mid-schedule; every other stage is a
# branch of it with another data mixture, learning rate or length. Most branches keep the learning
# rate constant (checkpoints saved mid-run); the two low-lr ones anneal it. The runs differ in
# length as a real training effort's do: the long ones (600 and 400 steps) ended two to three
# times as far from the trunk as the short ones (100 steps), so an equal-weight merge leans
# towards them, and the best merge weights the checkpoints unequally, which a uniform or greedy
# soup (equal weights over a subset) cannot do. The four single-task branches forget the other
# task, so they look bad alone, yet they carry their task's progress into a merge. No branch
# anneals on the even mixture: in this toy such a checkpoint matched or beat the best merge (a
# finished multi-task run leaves little to recycle), so the pool holds specialised or unfinished
# runs instead. An earlier pool of equal-length branches left no room: its greedy soup was as
# good as any linear merge (benchmarks/RESULTS.md, search_quality).
TRUNK = "step-0"
BASE = "base"
DEMO_PLAN: tuple[Stage, ...] = (
    Stage(TRUNK, None, 600, 3e-3, mixture_of(0.5), final_lr=1.0, warmup=30, seed=100, note="trunk, even mix"),
    Stage("step-1", TRUNK, 600, 3e-3, mixture_of(1.0), final_lr=1.0, seed=201, note="sorting only, long"),
    Stage("step-2", TRUNK, 100, 3e-3, mixture_of(0.0), final_lr=1.0, seed=202, note="reversal only, short"),
    Stage("step-3", TRUNK, 400, 3e-3, mixture_of(0.75), final_lr=1.0, seed=203, note="sorting 3:1, long"),
    Stage("step-4", TRUNK, 100, 3e-3, mixture_of(0.25), final_lr=1.0, seed=204, note="reversal 3:1, short"),
    Stage("step-5", TRUNK, 200, 5e-3, mixture_of(0.5), final_lr=1.0, seed=205, note="even mix, high lr"),
    Stage("step-6", TRUNK, 200, 1e-3, mixture_of(1.0), seed=206, note="sorting only, low lr, annealed"),
    Stage("step-7", TRUNK, 200, 1e-3, mixture_of(0.0), seed=207, note="reversal only, low lr, annealed"),
)


def scaled_plan(plan: Sequence[Stage], steps_scale: float) -> tuple[Stage, ...]:
    """``plan`` with every stage's steps (and warmup) multiplied by ``steps_scale`` (at least 1)."""
    return tuple(
        replace(s, steps=max(1, round(s.steps * steps_scale)), warmup=max(1, round(s.warmup * steps_scale)))
        for s in plan
    )


def build_demo_model(seed: int = 0):
    """A freshly initialised tiny Llama (character vocabulary) for the demo."""
    from transformers import AutoModelForCausalLM

    from hf_recycle.testing.models import tiny_llama_config

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_llama_config(**MODEL_OVERRIDES))


def _batch(tokenizer, stream: TrainingStream, shares: dict[str, float], size: int):
    """Right-padded ``(input_ids, attention_mask, labels)``; the loss covers answer + EOS only."""
    pairs = [stream.sample(shares) for _ in range(size)]
    prompts = tokenizer([p for p, _ in pairs])["input_ids"]
    answers = tokenizer([a for _, a in pairs])["input_ids"]
    rows = [(p, [*a, tokenizer.eos_token_id]) for p, a in zip(prompts, answers, strict=True)]
    length = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((size, length), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((size, length), dtype=torch.long)
    labels = torch.full((size, length), -100, dtype=torch.long)
    for i, (p, a) in enumerate(rows):
        n = len(p) + len(a)
        ids[i, :n] = torch.tensor(p + a)
        mask[i, :n] = 1
        labels[i, len(p) : n] = torch.tensor(a)
    return ids, mask, labels


def train_stage(model, tokenizer, stage: Stage, batch_size: int = BATCH_SIZE) -> float:
    """Train ``model`` in place for one stage; returns the last batch's loss."""
    stream = TrainingStream(stage.seed)
    torch.manual_seed(stage.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=stage.lr, betas=(0.9, 0.98), weight_decay=0.0)
    decay_steps = max(1, stage.steps - stage.warmup)
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(stage.steps):
        if step < stage.warmup:
            factor = (step + 1) / stage.warmup
        else:
            progress = (step - stage.warmup) / decay_steps
            factor = stage.final_lr + (1 - stage.final_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = stage.lr * factor
        ids, mask, labels = _batch(tokenizer, stream, stage.mixture, batch_size)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    return float(loss.detach())


def train_pool(
    out_dir: str | Path,
    plan: Sequence[Stage] = DEMO_PLAN,
    *,
    seed: int = 0,
    on_stage: Callable[[Stage, float, float], None] | None = None,
) -> dict[str, Path]:
    """Train every stage of ``plan`` in order and save each as a checkpoint folder.

    Args:
        out_dir: Where the folders go (``<out_dir>/<stage name>``).
        plan: The stages; a stage's parent must come before it.
        seed: Seed of the initial weights.
        on_stage: Called after each stage with ``(stage, last loss, seconds)``.

    Returns:
        Stage name -> checkpoint folder (``save_pretrained`` output with the tokenizer).
    """
    from hf_recycle.testing.models import build_char_tokenizer, save_checkpoint

    out_dir = Path(out_dir)
    tokenizer = build_char_tokenizer()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest, and reproducible
    try:
        model = build_demo_model(seed)
        init = {k: v.clone() for k, v in model.state_dict().items()}
        states: dict[str, dict[str, torch.Tensor]] = {}
        folders: dict[str, Path] = {}
        for stage in plan:
            if stage.parent is not None and stage.parent not in states:
                raise ValueError(
                    f"stage '{stage.name}' continues '{stage.parent}', which does not come before it"
                )
            model.load_state_dict(init if stage.parent is None else states[stage.parent])
            start = time.perf_counter()
            loss = train_stage(model, tokenizer, stage)
            seconds = time.perf_counter() - start
            states[stage.name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            folders[stage.name] = save_checkpoint(model, out_dir / stage.name, tokenizer=tokenizer)
            logger.info(
                "trained %s (%s): %d steps, loss %.3f, %.1fs",
                stage.name,
                stage.note,
                stage.steps,
                loss,
                seconds,
            )
            if on_stage is not None:
                on_stage(stage, loss, seconds)
        return folders
    finally:
        torch.set_num_threads(threads)
