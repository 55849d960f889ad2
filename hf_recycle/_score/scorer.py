"""Per-task scorers, built once per task and called on a live model for every candidate.

:class:`TaskScorer` loads and renders the task's split and tokenizes it at
construction. :meth:`TaskScorer.score` then only pads (once per example count,
device and context length, cached), runs the model and computes the metric: no
``datasets`` call and no tokenization per candidate. Nothing cached depends on the
model's weights, so the search may write new weights into the same model object in
place between calls.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hf_recycle._score import encoding
from hf_recycle._score.aggregate import oriented_mean
from hf_recycle._score.batching import (
    Batch,
    accepts_logits_to_keep,
    eos_token_ids,
    left_pad,
    model_context_length,
    model_device,
    plan_batches,
)
from hf_recycle._score.data import Example, load_examples
from hf_recycle._score.generate import greedy_generate
from hf_recycle._score.kinds import KINDS
from hf_recycle._score.likelihood import continuation_logprobs
from hf_recycle._score.metric import TaskMetric
from hf_recycle._score.tasks import SplitName, TaskSpec
from hf_recycle.errors import TaskError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskResult:
    """The score of one model on one task.

    Attributes:
        name: Task name.
        value: The aggregate on the metric's own scale (exact_match in 0..1; mean summed
            log-probability for ``loglikelihood``; corpus perplexity
            ``exp(Σ NLL / Σ tokens)`` for ``perplexity``).
        per_example: One score per example scored, in dataset order (the metric's
            per-example score; the summed log-probability; the example's perplexity).
        higher_is_better: Direction of ``value`` and ``per_example``.
        predictions: What the model produced, per example: the cut, stripped
            continuation (``generate``), the chosen option index (``choice``) or the
            target's token count (likelihood kinds). Not part of equality.
        raw: The model's raw output per scored sequence (generated token ids, or the
            target's summed log-probability and token count), so that a later call can
            score only the examples after these (``TaskScorer.score(..., resume=)``).
            Not part of equality.
    """

    name: str
    value: float
    per_example: tuple[float, ...]
    higher_is_better: bool
    predictions: tuple[str | int, ...] = field(default=(), compare=False, repr=False)
    raw: tuple = field(default=(), compare=False, repr=False)

    @property
    def oriented_value(self) -> float:
        """``value`` signed so that higher is always better (``-value`` when lower is better)."""
        return self.value if self.higher_is_better else -self.value


class TaskScorer:
    """Scores live models on one task.

    Args:
        spec: The task.
        tokenizer: The tokenizer of the models to score (any ``PreTrainedTokenizer``;
            one without a pad token is fine).
        split: ``"search"`` or ``"test"``.
        base_dir: Folder that relative data and metric paths resolve against (the
            recipe's folder).
        examples: Already-rendered examples, instead of loading ``spec.data`` (tests).

    Attributes:
        spec: The task.
        name: Task name.
        weight: Task weight in the macro-average.
        higher_is_better: Direction of the task's score.
        num_examples: Number of examples in the split.

    Raises:
        TaskError: The data, templates, split or metric are invalid (see
            :mod:`hf_recycle._score.data`, :mod:`hf_recycle._score.metric`).
    """

    def __init__(
        self,
        spec: TaskSpec,
        tokenizer,
        split: SplitName = "search",
        base_dir: str | Path | None = None,
        examples: Sequence[Example] | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.weight = spec.weight
        self.higher_is_better = spec.larger_is_better
        self.kind = KINDS[spec.kind]
        self.split = split
        self._examples = list(examples) if examples is not None else load_examples(spec, split, base_dir)
        if not self._examples:
            raise TaskError(f"task '{spec.name}': the {split} split holds no examples")
        self.num_examples = len(self._examples)
        self._tokenizer = tokenizer
        self._pad_id = encoding.pad_token_id(tokenizer, spec.name)
        self._tokenizer_limit = encoding.tokenizer_length_limit(tokenizer)
        prompts = encoding.format_prompts(
            tokenizer, [e.prompt for e in self._examples], spec.chat_template, spec.name
        )

        # Items are the sequences the model runs on: one per example, or one per option.
        self._offsets = list(range(self.num_examples + 1))
        if self.kind.generates:
            self._prompts = encoding.encode_prompts(tokenizer, prompts, spec.chat_template, spec.name)
        else:
            contexts: list[str] = []
            continuations: list[str] = []
            self._offsets = [0]
            for prompt, example in zip(prompts, self._examples, strict=True):
                for text in self.kind.continuations(example):
                    contexts.append(prompt)
                    continuations.append(text)
                self._offsets.append(len(contexts))
            self._pairs = encoding.encode_continuations(
                tokenizer, contexts, continuations, spec.chat_template, spec.name
            )

        self._metric: TaskMetric | None = None
        if spec.metric_name is not None:
            self._metric = TaskMetric(spec.metric_name, spec.name, spec.metric_key, base_dir)
            reference = self.references(1)
            self._metric.compute(reference, reference)  # fail now, not mid-search, on type or key errors
        self._token_budget: int | None = None
        self._plans: dict[tuple, list[tuple[Batch, list[int]]]] = {}
        self._warned: set[int | None] = set()
        logger.info("task '%s': %d examples (%s split)", self.name, self.num_examples, split)

    def __repr__(self) -> str:
        return f"TaskScorer(name={self.name!r}, kind={self.spec.kind!r}, split={self.split!r}, num_examples={self.num_examples})"

    def references(self, n: int) -> list:
        """What the metric compares the first ``n`` examples' predictions with (the kind decides)."""
        return self.kind.references(self._examples[:n])

    @property
    def offsets(self) -> list[int]:
        """Example ``i``'s items (sequences the model runs) are ``offsets[i]:offsets[i + 1]``."""
        return self._offsets

    @property
    def metric(self) -> TaskMetric | None:
        """The task's metric (None for kinds whose score is fixed)."""
        return self._metric

    def decode(self, ids: list[int]) -> str:
        """Generated token ids as text (special tokens skipped)."""
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    # --- batches (weight-independent, cached) ---------------------------------------------------

    def _items(self, first: int, n_items: int, context: int | None) -> tuple[list[list[int]], list[int]]:
        """Token sequences of items ``first..n_items-1``, left-truncated to ``context``, and tokens to score."""
        truncated = 0
        sequences: list[list[int]] = []
        scored: list[int] = []
        if self.kind.generates:
            new = self.spec.generation_length
            room = None if context is None else context - new
            if room is not None and room < 1:
                raise TaskError(
                    f"task '{self.name}': max_new_tokens {new} leaves no room for the prompt in the model's "
                    f"context of {context} tokens: lower max_new_tokens"
                )
            for ids in self._prompts[first:n_items]:
                if room is not None and len(ids) > room:
                    ids = ids[-room:]
                    truncated += 1
                sequences.append(ids)
                scored.append(0)
        else:
            for ctx, cont in self._pairs[first:n_items]:
                ids, n = ctx + cont, len(cont)
                if context is not None and len(ids) > context:
                    ids, n = ids[-context:], min(n, context - 1)
                    truncated += 1
                sequences.append(ids)
                scored.append(n)
        if truncated and context not in self._warned:
            self._warned.add(context)
            logger.warning(
                "task '%s': %d of %d sequences are longer than the model's context (%d tokens%s) "
                "and were truncated from the left",
                self.name,
                truncated,
                n_items - first,
                context,
                f" minus {self.spec.generation_length} new" if self.kind.generates else "",
            )
        return sequences, scored

    def _batches(
        self, first: int, n_items: int, device: torch.device, context: int | None
    ) -> list[tuple[Batch, list[int]]]:
        """Batches of items ``first..n_items-1``; ``Batch.items`` index from ``first``."""
        key = (first, n_items, str(device), context, self._token_budget)
        if key not in self._plans:
            sequences, scored = self._items(first, n_items, context)
            extra = self.spec.generation_length if self.kind.generates else 0
            lengths = [len(s) + extra for s in sequences]
            plan = []
            for items in plan_batches(lengths, self.spec.batch_size, device, self._token_budget):
                tensors = left_pad([sequences[i] for i in items], self._pad_id, device)
                plan.append((Batch(tuple(items), *tensors), [scored[i] for i in items]))
            self._plans[key] = plan
        return self._plans[key]

    # --- scoring --------------------------------------------------------------------------------

    def score(self, model, limit: int | None = None, *, resume: TaskResult | None = None) -> TaskResult:
        """Score ``model`` on the first ``limit`` examples (all when None).

        Args:
            model: A live causal LM (``PreTrainedModel``) on any device and dtype. It is
                put in eval mode for the call and given back in its previous mode.
            limit: Score only the first ``limit`` examples, in dataset order, for a cheap
                early estimate.
            resume: An earlier result of this scorer for the *same* model weights on fewer
                examples (a ``limit`` call): its outputs are reused and only the examples
                after them are run. The result is the one a fresh call would give.

        Returns:
            The aggregate and per-example scores.
        """
        if limit is not None and limit < 1:
            raise TaskError(f"task '{self.name}': limit must be >= 1, got {limit}")
        n = self.num_examples if limit is None else min(limit, self.num_examples)
        done = 0
        if resume is not None:
            done = len(resume.per_example)
            if resume.name != self.name or len(resume.raw) != self._offsets[done] or done > n:
                raise TaskError(
                    f"task '{self.name}': the result to resume is not an earlier, shorter result of this "
                    "scorer: score from the start instead"
                )
        was_training = model.training
        model.eval()
        try:
            while True:
                try:
                    with torch.inference_mode():
                        outputs = self._run(model, done, n)
                    break
                except torch.cuda.OutOfMemoryError:
                    if self.spec.batch_size != "auto" or not self._lower_budget(model, done, n):
                        raise
        finally:
            model.train(was_training)
        if resume is not None:
            outputs = list(resume.raw) + outputs
        return self._aggregate(outputs, n)

    def _lower_budget(self, model, done: int, n: int) -> bool:
        device = model_device(model)
        context = model_context_length(model, self._tokenizer_limit)
        plan = self._batches(self._offsets[done], self._offsets[n], device, context)
        largest = max(b.input_ids.numel() for b, _ in plan)
        if largest <= max(b.input_ids.shape[1] for b, _ in plan):
            return False  # already one sequence per batch
        self._token_budget = largest // 2
        self._plans.clear()
        torch.cuda.empty_cache()
        logger.warning(
            "task '%s': out of GPU memory; retrying with at most %d tokens per batch", self.name, largest // 2
        )
        return True

    def _run(self, model, done: int, n: int) -> list:
        """The raw outputs of the items of examples ``done..n-1``, in item order."""
        device = model_device(model)
        context = model_context_length(model, self._tokenizer_limit)
        first, n_items = self._offsets[done], self._offsets[n]
        keep = accepts_logits_to_keep(model)
        outputs: list = [None] * (n_items - first)
        if self.kind.generates:
            eos = eos_token_ids(model, self._tokenizer)
            stop = self.spec.stop
            tokenizer = self._tokenizer

            def decode(ids: list[int]) -> str:
                return tokenizer.decode(ids, skip_special_tokens=True)

            for batch, _ in self._batches(first, n_items, device, context):
                tokens = greedy_generate(
                    model, batch, self.spec.generation_length, eos, self._pad_id, stop, decode, keep
                )
                for item, ids in zip(batch.items, tokens, strict=True):
                    outputs[item] = ids
        else:
            for batch, scored in self._batches(first, n_items, device, context):
                for item, logprob, count in zip(
                    batch.items, continuation_logprobs(model, batch, scored, keep), scored, strict=True
                ):
                    outputs[item] = (logprob, count)
        return outputs

    def _aggregate(self, outputs: list, n: int) -> TaskResult:
        value, per_example, predictions = self.kind.aggregate(outputs, self, n)
        return TaskResult(
            self.name,
            float(value),
            tuple(per_example),
            self.higher_is_better,
            tuple(predictions),
            tuple(outputs),
        )


def build_scorers(
    specs: Sequence[TaskSpec], tokenizer, split: SplitName = "search", base_dir: str | Path | None = None
) -> list[TaskScorer]:
    """One scorer per task, in order (data loaded and tokenized now): a :class:`TaskScorer`, or the
    scorer of a kind that brings its own (``lm_eval``: :class:`~hf_recycle._score.lm_eval_scorer.LmEvalScorer`)."""
    scorers = []
    for spec in specs:
        own = KINDS[spec.kind].build_scorer(spec, tokenizer, split, base_dir)
        scorers.append(
            own if own is not None else TaskScorer(spec, tokenizer, split=split, base_dir=base_dir)
        )
    return scorers


def macro_average(
    results: Sequence[TaskResult] | Mapping[str, TaskResult],
    weights: Sequence[float] | Mapping[str, float] | None = None,
) -> float:
    """The task-weighted mean of the results, each signed so that higher is better.

    A task whose score is lower-is-better (perplexity, or ``higher_is_better: false``)
    enters as ``-value`` (:attr:`TaskResult.oriented_value`), so the mean is always to
    be maximized: it is the search's objective. With only higher-is-better tasks it is
    the plain weighted mean of the values.

    Args:
        results: Task results, as a list or a name -> result mapping.
        weights: Task weights, in the same order or by task name; all 1 when None.

    Raises:
        TaskError: No results, a weight per task is missing, or the weights sum to 0.
    """
    items = list(results.values()) if isinstance(results, Mapping) else list(results)
    if not items:
        raise TaskError("macro_average needs at least one task result")
    if weights is None:
        w = [1.0] * len(items)
    elif isinstance(weights, Mapping):
        missing = [r.name for r in items if r.name not in weights]
        if missing:
            raise TaskError(f"macro_average: no weight for task(s) {', '.join(missing)}")
        w = [float(weights[r.name]) for r in items]
    else:
        w = [float(x) for x in weights]
        if len(w) != len(items):
            raise TaskError(f"macro_average: {len(w)} weights for {len(items)} task results")
    if math.fsum(w) <= 0:
        raise TaskError("macro_average: the task weights must sum to a positive number")
    return oriented_mean((r.value, wi, r.higher_is_better) for wi, r in zip(w, items, strict=True))
