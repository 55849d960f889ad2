"""``vllm``: the tasks run by vLLM, each candidate's weights written into vLLM's own model in place.

The engine is built once per run from a model folder (``config.json`` and tokenizer): vLLM
loads that folder's weights (``hf-recycle score``) or random ones that the first candidate
replaces (a search, ``load_weights=False``). :meth:`VllmEngine.weights_changed` hands the
live model's tensors, under their checkpoint names, to vLLM's own weight loader (the
worker's ``reload_weights``: the model's ``load_weights``, which fuses q/k/v and gate/up
and shards for tensor parallelism, then each layer's post-load processing such as the
weight repacking of vLLM's CPU kernels), writing into the same parameter storage: no
disk, no new engine. The prefix cache is dropped then (its keys are token ids, not weights).

Per-example results equal the ``hf`` engine's (:mod:`~hf_recycle._score.engines.transformers`):
the same encoded items (each task's :class:`~hf_recycle._score.scorer.TaskScorer` encodes
and aggregates), greedy generation with the same EOS ids, ``stop`` strings and
``max_new_tokens``, cut where the hf loop cuts, and summed prompt log-probabilities of the
continuation tokens for ``choice``, ``loglikelihood`` and ``perplexity``. One difference:
vLLM reads the prompt log-probabilities of at most ``max_model_len - 1`` tokens (it always
samples one more), so a likelihood sequence at the model's full length loses one more
token from the left than in the hf engine.

An ``lm_eval`` task (:class:`~hf_recycle._score.lm_eval_scorer.LmEvalScorer`) is run through
lm-eval's own vLLM model given this engine's ``LLM`` (:mod:`~hf_recycle._score.lm_eval_vllm`),
so it too scores the weights pushed in place; its requests are lm-eval's, as with
``lm_eval --model vllm``.

vLLM runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` is set when the engine is
built) so that a weight push is an in-memory copy; its logs go to stderr, warnings only, unless
``VLLM_LOGGING_STREAM`` or ``VLLM_LOGGING_LEVEL`` say otherwise. Its distributed state is global, so a
process holds one vLLM instance at a time: engines built with the same arguments (a
search's search-split and test-split engines) share it, the last one closed shuts it down,
and building an engine for another model while one is open is refused.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

from hf_recycle._score.engines import ScoringEngine
from hf_recycle.errors import MissingDependencyError, TaskError

logger = logging.getLogger(__name__)

#: The KV cache reserved on a machine without a GPU when neither ``gpu_memory_utilization``
#: nor ``kv_cache_memory_bytes`` is given (vLLM's default, 92% of RAM, refuses to start).
CPU_KV_CACHE_BYTES = 1 << 30

_LIVE: list[_Runtime] = []  # the process's one vLLM instance, when there is one


class _Runtime:
    """One ``vllm.LLM`` and the engines that share it."""

    def __init__(self, key: tuple, llm: Any) -> None:
        self.key = key
        self.llm = llm
        self.users = 0
        self.max_model_len = int(llm.llm_engine.model_config.max_model_len)

    @classmethod
    def acquire(
        cls, model_dir: Path, tokenizer_dir: Path, load_weights: bool, options: Mapping[str, Any]
    ) -> _Runtime:
        key = (str(model_dir), str(tokenizer_dir), load_weights, repr(sorted(options.items())))
        if _LIVE and _LIVE[0].key != key:
            raise TaskError(
                f"a vllm engine for '{_LIVE[0].key[0]}' is open in this process and vLLM runs one model "
                f"per process: close it (engine.close()) before building one for '{model_dir}'"
            )
        if not _LIVE:
            _LIVE.append(cls(key, _build_llm(model_dir, tokenizer_dir, load_weights, options)))
        runtime = _LIVE[0]
        runtime.users += 1
        return runtime

    def release(self) -> None:
        self.users -= 1
        if self.users > 0 or not _LIVE or _LIVE[0] is not self:
            return
        _LIVE.clear()
        llm, self.llm = self.llm, None
        llm.llm_engine.engine_core.shutdown()  # also tears down vLLM's process-wide distributed state

    def push(self, weights: list[tuple[str, Any]]) -> None:
        """Write ``(checkpoint name, tensor)`` pairs into vLLM's model through its weight loader."""
        self.llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True}
        )
        if not self.llm.reset_prefix_cache():  # cached keys and values of the old weights would be reused
            raise TaskError(
                "vLLM could not drop its prefix cache after a weight change: requests are still running"
            )

    def generate(self, prompts: list[list[int]], params: list[Any]) -> list[Any]:
        from vllm.inputs import TokensPrompt

        requests = [TokensPrompt(prompt_token_ids=ids) for ids in prompts]
        return self.llm.generate(requests, params, use_tqdm=False)


def _build_llm(model_dir: Path, tokenizer_dir: Path, load_weights: bool, options: Mapping[str, Any]) -> Any:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process: weight pushes are memory copies
    # vLLM configures its logging when first imported: to stderr (stdout carries --json), warnings only
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        import vllm
        from vllm.platforms import current_platform
    except ImportError as exc:
        raise MissingDependencyError(
            "vllm",
            "the scoring engine 'vllm'",
            install="make install-vllm (a separate .venv-vllm, since vLLM pins its own torch and "
            "transformers), or pip install 'hf-recycle[vllm]' where vLLM's pins suit the environment",
        ) from exc
    # Each weight push logs that the rotary embedding (no checkpoint tensor) kept its own cache.
    logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(_not_rotary_reload)
    kwargs: dict[str, Any] = {k: v for k, v in options.items() if k != "llm_args"}
    kwargs.update(options.get("llm_args") or {})
    if current_platform.is_cpu() and not {"gpu_memory_utilization", "kv_cache_memory_bytes"} & set(kwargs):
        kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    kwargs.setdefault("seed", 0)
    if not load_weights:
        kwargs.setdefault("load_format", "dummy")  # the first candidate's weights replace them
    logger.info("building the vLLM engine for '%s' (%s)", model_dir, kwargs)
    try:
        return vllm.LLM(model=str(model_dir), tokenizer=str(tokenizer_dir), trust_remote_code=False, **kwargs)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise TaskError(
            f"vLLM cannot serve '{model_dir}' with options {kwargs}: {exc}; check the recipe's engine: "
            "options (on a CPU, gpu_memory_utilization is the share of RAM vLLM may use)"
        ) from exc


def _not_rotary_reload(record: logging.LogRecord) -> bool:
    """False for vLLM's "RotaryEmbedding: Failed to load weights" on a reload (its cache is computed, not loaded)."""
    return not (record.args == ("RotaryEmbedding",) and "Failed to load weights" in str(record.msg))


def _folder_facts(model_dir: Path) -> Any:
    """What the hf engine reads from a model loaded from ``model_dir``: its config and generation config."""
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    if (model_dir / "generation_config.json").is_file():
        generation = GenerationConfig.from_pretrained(model_dir)
    else:
        generation = GenerationConfig.from_model_config(config)
    return SimpleNamespace(config=config, generation_config=generation)


def _cut_like_hf(ids: Sequence[int], eos: set[int], stop: Sequence[str], decode: Any) -> list[int]:
    """Generated ids as the hf loop keeps them: up to (excluding) the first EOS, and up to
    (including) the token after which the decoded text first contains a stop string."""
    kept: list[int] = []
    for token in ids:
        if token in eos:
            break
        kept.append(token)
    if stop and any(s in decode(kept) for s in stop):
        for end in range(1, len(kept) + 1):
            if any(s in decode(kept[:end]) for s in stop):
                return kept[:end]
    return kept


class VllmEngine(ScoringEngine):
    """Tasks scored by one vLLM instance whose weights are overwritten per candidate.

    Args:
        scorers: One :class:`~hf_recycle._score.scorer.TaskScorer` per task (data encoded).
        runtime: The shared vLLM instance.
        model_dir: The folder the instance was built from (the model facts when the
            live model is not given).
    """

    name = "vllm"
    runs_own_model = True
    option_types: ClassVar[Mapping[str, type | tuple[type, ...]]] = {
        "gpu_memory_utilization": (float, int),
        "kv_cache_memory_bytes": int,
        "max_model_len": int,
        "tensor_parallel_size": int,
        "enforce_eager": bool,
        "dtype": str,
        "max_num_seqs": int,
        "llm_args": dict,
    }

    def __init__(self, scorers: Sequence[Any], runtime: _Runtime, model_dir: Path) -> None:
        from hf_recycle._score.lm_eval_scorer import LmEvalScorer
        from hf_recycle._score.scorer import TaskScorer

        if not scorers:
            raise TaskError("a scoring engine needs at least one task")
        for scorer in scorers:
            if not isinstance(scorer, (TaskScorer, LmEvalScorer)):
                raise TaskError(
                    f"task '{scorer.name}' cannot be scored by the vllm engine: use engine 'hf' for it"
                )
        self.scorers = list(scorers)
        self._runtime: _Runtime | None = runtime
        self._model_dir = model_dir
        self._facts: Any = None
        self._lm_eval_model: Any = None

    @classmethod
    def build(
        cls,
        tokenizer,
        tasks,
        split,
        base_dir: str | Path | None = None,
        *,
        model_dir: str | Path | None = None,
        tokenizer_dir: str | Path | None = None,
        load_weights: bool = True,
        **options,
    ):
        from hf_recycle._score.engines import option_problems
        from hf_recycle._score.scorer import build_scorers

        if model_dir is None:
            raise TaskError(
                "the vllm engine needs the folder of the model to score (config.json and tokenizer): "
                "score a checkpoint folder or a Hub spec, or pass model_dir="
            )
        problems = option_problems(cls.name, options)
        if problems:
            raise TaskError("engine: " + "; ".join(problems))
        scorers = build_scorers(list(tasks), tokenizer, split=split, base_dir=base_dir)  # data first
        model_dir = Path(model_dir)
        runtime = _Runtime.acquire(model_dir, Path(tokenizer_dir or model_dir), bool(load_weights), options)
        return cls(scorers, runtime, model_dir)

    @property
    def tasks(self) -> Sequence[Any]:
        return self.scorers

    @property
    def llm(self) -> Any:
        """The ``vllm.LLM`` instance."""
        return self._live_runtime().llm

    def _live_runtime(self) -> _Runtime:
        if self._runtime is None:
            raise TaskError("this vllm engine is closed: build a new one")
        return self._runtime

    def weights_changed(self, model) -> None:
        self._live_runtime().push([(name, param.detach()) for name, param in model.named_parameters()])

    def _model_facts(self, model) -> tuple[list[int], int]:
        """EOS ids and context length as the hf engine takes them from ``model`` (or the folder's model)."""
        from hf_recycle._score.batching import eos_token_ids, model_context_length
        from hf_recycle._score.encoding import tokenizer_length_limit

        if model is None:
            if self._facts is None:
                self._facts = _folder_facts(self._model_dir)
            model = self._facts
        tokenizer = self.scorers[0]._tokenizer
        context = model_context_length(model, tokenizer_length_limit(tokenizer))
        limit = self._live_runtime().max_model_len
        return eos_token_ids(model, tokenizer), limit if context is None else min(context, limit)

    def _lm_eval(self) -> Any:
        """lm-eval's vLLM model over this engine's ``LLM`` (for the ``lm_eval`` tasks)."""
        if self._lm_eval_model is None:
            from hf_recycle._score.lm_eval_vllm import EngineVLLM

            if self._facts is None:
                self._facts = _folder_facts(self._model_dir)
            tokenizer = self.scorers[0]._tokenizer
            self._lm_eval_model = EngineVLLM(self._live_runtime().llm, tokenizer, self._facts.config)
        return self._lm_eval_model

    def score(self, model, *, limit=None, limit_fraction=None, resume=None):
        """Score the weights vLLM holds; ``model`` (the live model, or None) only gives EOS ids and context."""
        from vllm import SamplingParams

        from hf_recycle._score.lm_eval_scorer import LmEvalScorer

        runtime = self._live_runtime()
        limits = self.limits(limit, limit_fraction)
        eos, context = self._model_facts(model)
        jobs: list[tuple[Any, int, Any, list[list[int]], list[int]]] = []
        prompts: list[list[int]] = []
        params: list[Any] = []
        results = {}
        for scorer in self.scorers:
            earlier = None if resume is None else resume[scorer.name]
            if isinstance(scorer, LmEvalScorer):  # lm-eval's requests, through lm-eval's vLLM model
                results[scorer.name] = scorer.run(self._lm_eval(), limits[scorer.name], resume=earlier)
                continue
            n, done = _span(scorer, limits[scorer.name], earlier)
            first, last = scorer.offsets[done], scorer.offsets[n]
            if scorer.kind.generates:
                sequences, scored = scorer._items(first, last, context)
                stop = list(scorer.spec.stop)
                param = SamplingParams(
                    temperature=0.0,
                    max_tokens=scorer.spec.generation_length,
                    stop=stop or None,
                    stop_token_ids=eos,
                    ignore_eos=True,  # EOS is the hf engine's set above, not vLLM's own choice
                    detokenize=bool(stop),
                    skip_special_tokens=True,
                )
            else:
                sequences, scored = scorer._items(first, last, context - 1)
                param = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0, detokenize=False)
            jobs.append((scorer, n, earlier, sequences, scored))
            prompts.extend(sequences)
            params.extend([param] * len(sequences))
        outputs = iter(runtime.generate(prompts, params) if prompts else [])
        eos_set = set(eos)
        for scorer, n, earlier, sequences, scored in jobs:
            raw: list[Any] = [] if earlier is None else list(earlier.raw)
            for ids, count in zip(sequences, scored, strict=True):
                out = next(outputs)
                if scorer.kind.generates:
                    raw.append(
                        _cut_like_hf(out.outputs[0].token_ids, eos_set, scorer.spec.stop, scorer.decode)
                    )
                else:
                    logprobs = out.prompt_logprobs
                    total = sum(logprobs[i][ids[i]].logprob for i in range(len(ids) - count, len(ids)))
                    raw.append((float(total), count))
            results[scorer.name] = scorer._aggregate(raw, n)
        return {scorer.name: results[scorer.name] for scorer in self.scorers}

    def close(self) -> None:
        self._lm_eval_model = None
        if self._runtime is not None:
            self._runtime.release()
            self._runtime = None


def _span(scorer: Any, limit: int | None, resume: Any) -> tuple[int, int]:
    """``(n, done)``: examples to score in all, and those ``resume`` already holds (as TaskScorer.score)."""
    if limit is not None and limit < 1:
        raise TaskError(f"task '{scorer.name}': limit must be >= 1, got {limit}")
    n = scorer.num_examples if limit is None else min(limit, scorer.num_examples)
    done = 0
    if resume is not None:
        done = len(resume.per_example)
        if resume.name != scorer.name or len(resume.raw) != scorer.offsets[done] or done > n:
            raise TaskError(
                f"task '{scorer.name}': the result to resume is not an earlier, shorter result of this "
                "engine: score from the start instead"
            )
    return n, done
