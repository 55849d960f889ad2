"""The scorer of ``lm_eval`` tasks: lm-eval builds the requests and computes the metric, our model answers.

:class:`LmEvalScorer` loads the lm-eval task once (:func:`~hf_recycle._score.lm_eval_tasks.load_task`)
and builds the requests of its split's documents once, few-shot contexts included, with the
documents selected as ``lm_eval --samples`` selects them (``docs[:N]`` gives what ``--limit N``
gives). Each :meth:`LmEvalScorer.score` sends those requests to an lm-eval ``LM`` over the live
model, applies the task's filters and ``process_results`` per document, and aggregates the
metric with the task's own aggregation, as ``lm_eval.evaluator.evaluate`` does: the value equals
what the ``lm_eval`` command reports for the same documents. The ``LM`` is lm-eval's ``HFLM``
given the instantiated model and tokenizer (engine ``hf``), or one over the vLLM engine's
in-process ``LLM`` (engine ``vllm``, :mod:`~hf_recycle._score.lm_eval_vllm`): no checkpoint is
written per candidate.

Per-example scores are the metric's aggregation over each document alone (the document's value
for a mean such as ``acc``), and feed the bootstrap like every other task's.
"""

from __future__ import annotations

import copy
import logging
import math
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hf_recycle._score.kinds import KINDS
from hf_recycle._score.lm_eval_tasks import doc_indices, load_task, metric_problem, parse_metric_key
from hf_recycle._score.scorer import TaskResult
from hf_recycle._score.tasks import SplitName, TaskSpec
from hf_recycle.errors import TaskError

logger = logging.getLogger(__name__)

_SPLIT_KEYS = {"search": "search_split", "validation": "validation_split", "test": "test_split"}


@contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """lm-eval's loggers ``names`` at ERROR for the block (warnings that do not apply to a live model)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


class LmEvalScorer:
    """Scores live models on one lm-eval task (the :class:`~hf_recycle._score.scorer.TaskScorer` interface).

    Args:
        spec: A task of kind ``lm_eval``.
        tokenizer: The tokenizer of the models to score (copied: lm-eval may set its pad token).
        split: ``"search"``, ``"validation"`` or ``"test"``: which slice of the task's
            evaluation documents.
        base_dir: Folder that ``include_path`` resolves against (the recipe's folder).

    Attributes:
        spec, name, weight, higher_is_better, split: As for TaskScorer.
        num_examples: Documents in the split.
        task: The lm-eval task object.

    Raises:
        TaskError: No such task or metric, data that cannot be loaded, a split that selects no
            documents or shares documents with another split of the task.
        MissingDependencyError: lm-eval is not installed.
    """

    def __init__(
        self, spec: TaskSpec, tokenizer: Any, split: SplitName = "search", base_dir: str | Path | None = None
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.weight = spec.weight
        self.higher_is_better = spec.larger_is_better
        self.kind = KINDS[spec.kind]
        self.split = split
        self._tokenizer = tokenizer
        (self._metric, self._filter), why = parse_metric_key(spec.metric or "")
        if why:
            raise TaskError(f"task '{spec.name}': {why}")
        expression = spec.split_expression(split)
        with _quiet("lm_eval.api.task"):
            self.task = load_task(spec, base_dir)
        self._check_metric()
        n_docs = len(self.task.eval_docs)
        indices = doc_indices(expression, n_docs)
        if not indices:
            raise TaskError(
                f"task '{spec.name}': {split}_split '{expression}' selects none of the task's {n_docs} documents: "
                "check the slice bounds"
            )
        self._check_disjoint(split, set(indices), n_docs)
        # the requests of every document of the split, built once (few-shot contexts drawn in document order)
        self.task.build_all_requests(samples=indices, rank=0, world_size=1)
        by_doc: dict[int, list[Any]] = defaultdict(list)
        for instance in self.task.instances:
            by_doc[instance.doc_id].append(instance)
        docs = [doc for _, doc in self.task.doc_iterator(samples=indices)]
        self._docs = [(doc, sorted(by_doc[i], key=lambda r: r.idx)) for i, doc in enumerate(docs)]
        self.num_examples = len(self._docs)
        aggregations = self.task.aggregation()
        if self._metric in aggregations:
            self._aggregate_items = aggregations[self._metric]
        else:  # as lm-eval: a metric without an aggregation is averaged
            from lm_eval.api.metrics import mean

            self._aggregate_items = mean
        self._hf_tokenizer: Any = None
        self._lm: Any = None
        self._lm_model: Any = None
        self._auto_batch_size: int | None = None
        logger.info(
            "task '%s': lm-eval task '%s', %d of %d documents (%s split)",
            self.name,
            spec.lm_eval.task,
            self.num_examples,
            n_docs,
            split,
        )

    def __repr__(self) -> str:
        return (
            f"LmEvalScorer(name={self.name!r}, task={self.spec.lm_eval.task!r}, split={self.split!r}, "
            f"num_examples={self.num_examples})"
        )

    def _check_metric(self) -> None:
        reported: dict[str, bool | None] = {}
        directions = self.task.higher_is_better() or {}
        filters = [f.name for f in getattr(self.task, "_filters", [])] or ["none"]
        for metric in self.task.aggregation():
            for flt in filters:
                reported[f"{metric},{flt}"] = directions.get(metric)
        why = metric_problem(self.spec, reported)
        if why:
            raise TaskError(f"task '{self.name}': {why}")

    def _check_disjoint(self, split: str, mine: set[int], n_docs: int) -> None:
        for other, key in _SPLIT_KEYS.items():
            expression = getattr(self.spec, key)
            if other == split or expression is None:
                continue
            shared = mine & set(doc_indices(expression, n_docs))
            if shared:
                raise TaskError(
                    f"task '{self.name}': {split}_split '{self.spec.split_expression(split)}' and {key} "
                    f"'{expression}' share {len(shared)} of the task's {n_docs} documents (from document "
                    f"{min(shared)}): make the slices disjoint"
                )

    # --- scoring --------------------------------------------------------------------------------

    def score(self, model: Any, limit: int | None = None, *, resume: TaskResult | None = None) -> TaskResult:
        """Score a live causal LM (``PreTrainedModel``) through lm-eval's ``HFLM``, as :meth:`run` does.

        The model is put in eval mode for the call and given back in its previous mode.
        """
        lm = self._hf_lm(model)
        was_training = model.training
        model.eval()
        try:
            return self.run(lm, limit, resume=resume)
        finally:
            model.train(was_training)

    def _hf_lm(self, model: Any) -> Any:
        """lm-eval's ``HFLM`` over ``model`` (kept while the same model object is scored)."""
        if self._lm is not None and self._lm_model is model:
            return self._lm
        from lm_eval.models.huggingface import HFLM

        if self._hf_tokenizer is None:
            self._hf_tokenizer = copy.deepcopy(self._tokenizer)
        size = self.spec.batch_size
        with _quiet("lm_eval.models.huggingface"):  # "pretrained is not a str": that is the point
            lm = HFLM(
                pretrained=model, tokenizer=self._hf_tokenizer, batch_size=1 if size == "auto" else size
            )
        if size == "auto":  # lm-eval's detection (trial forwards at the model's length), once per scorer
            if self._auto_batch_size is None:
                self._auto_batch_size = int(lm._detect_batch_size())
                logger.info("task '%s': lm-eval batch size %d", self.name, self._auto_batch_size)
            lm.batch_size_per_gpu = self._auto_batch_size
        self._lm, self._lm_model = lm, model
        return lm

    def run(self, lm: Any, limit: int | None = None, *, resume: TaskResult | None = None) -> TaskResult:
        """Score the first ``limit`` documents (all when None) with the lm-eval ``LM`` ``lm``.

        Args:
            lm: An ``lm_eval.api.model.LM`` over the model to score.
            limit: Only the first ``limit`` documents of the split, in order.
            resume: An earlier result of this scorer for the same weights on fewer documents:
                only the documents after them are run.
        """
        if limit is not None and limit < 1:
            raise TaskError(f"task '{self.name}': limit must be >= 1, got {limit}")
        n = self.num_examples if limit is None else min(limit, self.num_examples)
        items: list[Any] = []
        predictions: list[Any] = []
        if resume is not None:
            done = len(resume.per_example)
            if resume.name != self.name or len(resume.raw) != done or done > n:
                raise TaskError(
                    f"task '{self.name}': the result to resume is not an earlier, shorter result of this "
                    "scorer: score from the start instead"
                )
            items, predictions = list(resume.raw), list(resume.predictions)
        docs = self._docs[len(items) : n]
        instances = [request for _, requests in docs for request in requests]
        by_type: dict[str, list[Any]] = defaultdict(list)
        for request in instances:
            request.resps, request.filtered_resps = [], {}
            by_type[request.request_type].extend([request] * request.repeats)
        for request_type, requests in by_type.items():
            answers = getattr(lm, request_type)(requests, disable_tqdm=True)
            for answer, request in zip(answers, requests, strict=True):
                request.resps.append(answer)
        if instances:
            for ensemble in self.task._filters:
                ensemble.apply(instances)
        for doc, requests in docs:
            answers = [r.filtered_resps[self._filter] for r in requests]
            metrics = self.task.process_results(doc, answers)
            if self._metric not in metrics:
                raise TaskError(
                    f"task '{self.name}': lm-eval's task gave no '{self._metric}' for document {len(items)} "
                    f"(it gave {', '.join(metrics)})"
                )
            items.append(metrics[self._metric])
            predictions.append(self._prediction(answers))
        value = float(self._aggregate_items(items))
        return TaskResult(
            self.name,
            value,
            tuple(self._one(item) for item in items),
            self.higher_is_better,
            tuple(predictions),
            tuple(items),
        )

    def _one(self, item: Any) -> float:
        """The metric of one document: the task's aggregation over that document alone."""
        try:
            return float(self._aggregate_items([item]))
        except Exception:  # an aggregation that needs several documents (a correlation)
            if isinstance(item, (int, float)):
                return float(item)
            return math.nan

    def _prediction(self, answers: list[Any]) -> Any:
        """What the model answered for one document: the text (generation) or the chosen option."""
        output = self.task.OUTPUT_TYPE
        if output == "generate_until":
            return answers[0]
        if output == "multiple_choice":
            lls = [a[0] for a in answers]
            return max(range(len(lls)), key=lls.__getitem__)
        return answers[0][0] if isinstance(answers[0], tuple) else answers[0]
