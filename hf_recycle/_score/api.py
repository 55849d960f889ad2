"""The public :func:`score`: one model on a recipe's tasks, per-task results and the mean."""

from __future__ import annotations

import logging
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_recycle._score.engines import get_engine
from hf_recycle._score.scorer import TaskResult, macro_average
from hf_recycle._score.tasks import SplitName, TaskSpec, load_tasks
from hf_recycle.errors import CheckpointFormatError, CheckpointNotFoundError, SpecError, TaskError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreReport:
    """Scores of one model on a set of tasks.

    Attributes:
        results: Task name -> :class:`~hf_recycle._score.scorer.TaskResult`, in task order.
        mean: Task-weighted macro-average, lower-is-better tasks entering as ``-value``
            (see :func:`~hf_recycle._score.scorer.macro_average`).
        split: The split scored (``search`` or ``test``).
        model: How the model was named (spec, path or class name).
    """

    results: Mapping[str, TaskResult]
    mean: float
    split: str
    model: str

    def to_json(self) -> dict[str, Any]:
        """The stable ``--json`` form: ``{"scores": {"<task>": value, ...}, "mean": value}``."""
        return {"scores": {name: r.value for name, r in self.results.items()}, "mean": self.mean}


def _local_folder(spec: str) -> Path | None:
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if spec.startswith((".", "/", "~")) or "\\" in spec:
        raise CheckpointNotFoundError(
            f"checkpoint folder '{spec}' does not exist: pass an existing folder that holds config.json "
            "and model.safetensors, or a Hub spec such as org/name@revision"
        )
    return None


def resolve_model_folder(spec: str, endpoint: str | None = None, token: str | bool | None = None) -> Path:
    """The local folder of a model spec: a local folder as is, a Hub spec downloaded (one checkpoint).

    Raises:
        CheckpointNotFoundError: A local path that does not exist.
        SpecError: A Hub spec that expands to several checkpoints.
        CheckpointFormatError: The checkpoint is a LoRA adapter.
    """
    folder = _local_folder(spec)
    if folder is not None:
        from hf_recycle.hub.files import FolderContents

        if FolderContents.of_folder(folder).kind == "lora":
            raise _adapter_refused(spec)
        return folder
    from hf_recycle.hub.download import fetch_checkpoints

    fetched = fetch_checkpoints([spec], endpoint=endpoint, token=token)
    if len(fetched) != 1:
        raise SpecError(
            f"model spec '{spec}' expands to {len(fetched)} checkpoints; score takes one: "
            "name a single revision or subfolder"
        )
    pin, folder = fetched[0]
    if pin.kind == "lora":
        raise _adapter_refused(spec)
    return Path(folder)


def _adapter_refused(spec: str) -> CheckpointFormatError:
    """The error for a model spec that names a LoRA adapter (local or on the Hub)."""
    return CheckpointFormatError(
        f"'{spec}' is a LoRA adapter: score takes full weights; merge it into its base first, with "
        f"hf-recycle merge {shlex.quote(spec)} --base BASE --output DIR (or peft's merge_and_unload()), "
        "then score DIR"
    )


def load_tokenizer(folder: str | Path) -> Any:
    """The tokenizer saved in a checkpoint folder (no remote code).

    Raises:
        CheckpointFormatError: The folder has no loadable tokenizer.
    """
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointFormatError(
            f"cannot load the tokenizer from '{folder}': {exc}; save the tokenizer with the checkpoint "
            "or pass tokenizer="
        ) from exc


def load_model(folder: str | Path, device: str = "auto", dtype: str = "auto") -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer from a local folder (safetensors only, no remote code).

    Args:
        folder: A checkpoint folder with ``config.json``, safetensors weights and tokenizer files.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        dtype: ``auto`` (bfloat16 on GPU, float32 on CPU), ``float32``, ``bfloat16`` or ``float16``.

    Returns:
        ``(model, tokenizer)``, the model in eval mode on ``device``.

    Raises:
        CheckpointNotFoundError: The folder has no ``config.json``.
        CheckpointFormatError: The weights or the tokenizer cannot be loaded.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from hf_recycle.units import torch_dtype

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointNotFoundError(
            f"'{folder}' has no config.json: pass a folder saved by save_pretrained"
        )
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, use_safetensors=True, trust_remote_code=False, dtype=torch_dtype(dtype)
        )
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointFormatError(f"cannot load a causal LM from '{folder}': {exc}") from exc
    return model.to(device).eval(), load_tokenizer(folder)


def score(
    model: str | Path | Any,
    tasks: str | Path | Sequence[TaskSpec],
    split: SplitName = "search",
    *,
    tokenizer: Any = None,
    base_dir: str | Path | None = None,
    limit: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    endpoint: str | None = None,
    token: str | bool | None = None,
    engine: str | None = None,
    engine_options: Mapping[str, Any] | None = None,
) -> ScoreReport:
    """Score one model on a recipe's tasks.

    Args:
        model: A local checkpoint folder, a Hub spec (``org/name@rev:sub``, one
            checkpoint), or a loaded ``PreTrainedModel``.
        tasks: A recipe file (only its ``tasks:`` and ``engine:`` sections are read) or a
            list of :class:`~hf_recycle._score.tasks.TaskSpec`.
        split: ``"search"`` or ``"test"`` (the held-out split).
        tokenizer: The tokenizer; by default the one saved with the model.
        base_dir: Folder that relative data paths resolve against; by default the
            recipe's folder (or the current folder for a list of tasks).
        limit: Score only the first ``limit`` examples of each task.
        device: For a model given by path or spec: ``auto``, ``cpu`` or ``cuda``.
        dtype: For a model given by path or spec: ``auto`` (bfloat16 on GPU, float32 on
            CPU; the ``vllm`` engine's own default), ``float32``, ``bfloat16`` or ``float16``.
        endpoint: Hub endpoint for Hub specs.
        token: Hub token for Hub specs.
        engine: The scoring engine (``hf`` or ``vllm``; default: the recipe's ``engine:``,
            else ``hf``); the recipe's engine options apply when it names the same engine.
        engine_options: More engine options (``vllm``: ``gpu_memory_utilization``...).

    Returns:
        Per-task results and their weighted mean.

    Raises:
        TaskError: Invalid tasks, data or metrics.
        CheckpointNotFoundError: The model folder does not exist.
    """
    if split not in ("search", "test"):
        raise TaskError(f"split must be 'search' or 'test', got {split!r}")
    if isinstance(tasks, (str, Path)):
        specs = load_tasks(tasks)
        base_dir = Path(tasks).resolve().parent if base_dir is None else base_dir
    else:
        specs = list(tasks)
        if not specs:
            raise TaskError("no tasks to score: pass a recipe or a non-empty list of TaskSpec")
    for spec in specs:
        spec.split_expression(split)  # fail before loading the model when a test split is missing

    folder: Path | None = None
    if isinstance(model, (str, Path)):
        name = str(model)
        folder = resolve_model_folder(name, endpoint, token)
        if not (folder / "config.json").is_file():
            raise CheckpointNotFoundError(
                f"'{folder}' has no config.json: pass a folder saved by save_pretrained"
            )
        tokenizer = tokenizer or load_tokenizer(folder)
    else:
        name = getattr(model, "name_or_path", "") or type(model).__name__
        if tokenizer is None:
            saved = getattr(model, "name_or_path", None)
            if not saved or not Path(saved).is_dir():
                raise TaskError(
                    "score(model=<loaded model>) needs tokenizer=...: the model has no local folder"
                )
            tokenizer = load_tokenizer(saved)

    from hf_recycle._score.engine_spec import EngineSpec, load_engine_spec

    chosen = (load_engine_spec(tasks) if isinstance(tasks, (str, Path)) else EngineSpec()).named(engine)
    engine_cls = get_engine(chosen.name)
    source = folder or getattr(model, "name_or_path", None)
    model_dir = source if source and (Path(source) / "config.json").is_file() else None
    options = {**chosen.options, **(engine_options or {})}
    if dtype != "auto" and "dtype" in engine_cls.option_types:  # --dtype reaches an engine's own model
        options.setdefault("dtype", dtype)
    # Tasks first: bad data or templates fail before the (possibly large) model loads.
    engine = engine_cls.build(
        tokenizer, specs, split, base_dir, model_dir=model_dir, load_weights=folder is not None, **options
    )
    try:
        if folder is None:
            loaded = model
            engine.weights_changed(loaded)  # the given weights, not the folder's, are scored
        else:  # an engine that runs its own model has loaded the folder itself
            loaded = None if engine_cls.runs_own_model else load_model(folder, device, dtype)[0]
        results: dict[str, TaskResult] = engine.score(loaded, limit=limit)
    finally:
        engine.close()
    for task in engine.tasks:
        logger.info(
            "%s: %s = %.6g", task.name, task.spec.metric_name or task.spec.kind, results[task.name].value
        )
    mean = macro_average(results, {s.name: s.weight for s in engine.tasks})
    return ScoreReport(results=results, mean=mean, split=split, model=name)
