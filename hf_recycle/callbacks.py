"""``RecycleCallback``: recycle the checkpoints of a ``transformers.Trainer`` run in one line.

::

    trainer = Trainer(..., callbacks=[RecycleCallback("recipe.yaml", trials=40)])
    trainer.train()   # then: output_dir/recycled/model/ (weights + README.md card), results.json

While training, :meth:`RecycleCallback.on_save` records each ``checkpoint-N`` folder the
Trainer writes (full weights, or a PEFT adapter when the model is a ``PeftModel``) and,
with ``push_to_hub`` and ``hub_strategy`` ``every_save`` or ``all_checkpoints``, where
the checkpoint went on the Hub. At the end, :meth:`RecycleCallback.on_train_end` saves
the final weights (when the last save was not at the last step), runs the recipe's
search over the recorded checkpoints plus the final weights, writes the merged model,
its card and ``results.json`` to ``output_dir/recycled``, logs the scores through the
Trainer's log (so TensorBoard, W&B and the other reporters get them) and pushes when
asked.

Rotated checkpoints (``save_total_limit``): the Trainer deletes old ``checkpoint-N``
folders. By default they leave the pool (a warning at train begin says so), unless
they were pushed with ``hub_strategy="all_checkpoints"`` (the ``checkpoint-N``
subfolder stays on the Hub) or ``every_save`` (the commit that pushed them). With
``keep_checkpoints=True`` each checkpoint's model files (weights, configs, tokenizer;
not the optimizer state) are hard-linked at save time into
``output_dir/_recycle/pool/checkpoint-N`` (copied where hard links are impossible), so
rotation deletes only the Trainer's folder; the weights stay on disk until you delete
that pool. Folders under ``output_dir`` starting with ``_`` are never uploaded by the
Trainer's Hub pushes.

Distributed training: only the world process zero records, saves and recycles; the
other processes return at once.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from hf_recycle.errors import RecycleCallbackError

logger = logging.getLogger(__name__)

__all__ = ["RecycleCallback", "RecordedCheckpoint"]

WORK_DIR = "_recycle"  # under the Trainer's output_dir; "_*" is never pushed by the Trainer
RESULTS_DIR = "recycled"
POOL_FILE = "pool.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# Trainer state saved beside the model in checkpoint-N: not needed to merge or score.
_TRAINER_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "training_args.bin", "trainer_state.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


@dataclass(frozen=True)
class RecordedCheckpoint:
    """One checkpoint the Trainer saved during the run.

    Attributes:
        step: Global step of the save (``N`` of ``checkpoint-N``; ``-1`` for the final weights).
        path: The folder the Trainer (or the callback, for the final weights) wrote.
        kind: ``"full"`` for complete weights, ``"lora"`` for a PEFT adapter.
        kept: The hard-linked copy under ``_recycle/pool`` (``keep_checkpoints=True``).
        hub_spec: Where the checkpoint is on the Hub, as a spec (``org/run@main:checkpoint-N``,
            or ``org/run@<sha>`` once an ``every_save`` commit is found).
        hub_commit_title: Title of the ``every_save`` commit that pushed it, to find its sha.
    """

    step: int
    path: Path
    kind: str
    kept: Path | None = None
    hub_spec: str | None = None
    hub_commit_title: str | None = None

    @property
    def name(self) -> str:
        """``checkpoint-N``, or ``final``."""
        return "final" if self.step < 0 else f"checkpoint-{self.step}"

    def spec(self) -> str | None:
        """The spec the search reads it from: its folder, else the kept copy, else the Hub; None when gone."""
        for folder in (self.path, self.kept):
            if folder is not None and _has_weights(folder):
                return str(folder)
        return self.hub_spec

    def to_json(self) -> dict[str, Any]:
        """JSON form written to ``pool.json``."""
        return {
            "name": self.name,
            "step": self.step,
            "path": str(self.path),
            "kind": self.kind,
            "kept": str(self.kept) if self.kept else None,
            "hub_spec": self.hub_spec,
            "spec": self.spec(),
        }


def _has_weights(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    names = {p.name for p in folder.iterdir()}
    return any(n.endswith(".safetensors") or n in ("pytorch_model.bin", "adapter_model.bin") for n in names)


def _kind_of(folder: Path) -> str:
    return (
        "lora"
        if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file()
        else "full"
    )


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in _TOKENIZER_FILES)


def _link_model_files(src: Path, dst: Path) -> None:
    """Hard-link (else copy) the model files of ``src`` into ``dst``: not the optimizer or RNG state."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for file in src.iterdir():
        if not file.is_file() or file.name in _TRAINER_FILES or file.name.startswith("rng_state"):
            continue
        try:
            os.link(file, tmp / file.name)
        except OSError:
            shutil.copy2(file, tmp / file.name)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def _find_caller(cls: type, depth: int = 8) -> Any:
    """The nearest ``self`` of type ``cls`` among the calling frames (the Trainer or its CallbackHandler)."""
    frame = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, cls):
            return candidate
        frame = frame.f_back
    return None


class RecycleCallback(TrainerCallback):
    """Recycle the checkpoints of a Trainer run into one optimized merge, at the end of training.

    Args:
        recipe: A recipe file or :class:`~hf_recycle.recipe.Recipe`. Its ``tasks`` score the
            candidates; its ``checkpoints`` may be empty (any listed are added to the pool,
            before the run's own).
        trials: Override of ``search.trials``.
        push_to: Push the merged model to this Hub repo (``org/name``); implies ``push``.
        push: Push to the recipe's ``push.repo`` (or ``push_to``) when done.
        keep_checkpoints: Keep the model files of checkpoints that ``save_total_limit`` rotates
            away (hard links under ``output_dir/_recycle/pool``), so they stay in the pool.
        include_final: Add the weights at the end of training to the pool (saved to
            ``output_dir/_recycle/final`` unless the last save was at the last step).
        output_dir: Where the merged model, card and results go (default:
            ``<Trainer output_dir>/recycled``).
        tokenizer: Tokenizer to score with when the Trainer has no ``processing_class``; it
            is saved into checkpoint folders that lack one.
        base_dir: Folder that the tasks' relative data paths resolve against (default: the
            recipe file's folder, or the current folder for a Recipe object).
        device: Where the search runs the candidates (default: the recipe's ``merge.device``).

    Raises:
        RecipeError: The recipe file is invalid (raised here, before training starts).
        RecycleCallbackError: At train begin: no task to score, or no tokenizer.
    """

    def __init__(
        self,
        recipe: Any,
        *,
        trials: int | None = None,
        push_to: str | None = None,
        push: bool = False,
        keep_checkpoints: bool = False,
        include_final: bool = True,
        output_dir: str | Path | None = None,
        tokenizer: Any = None,
        base_dir: str | Path | None = None,
        device: str | None = None,
    ) -> None:
        from hf_recycle.recipe import PushSpec, Recipe

        if isinstance(recipe, str | Path):
            path = Path(recipe)
            recipe = Recipe.from_yaml(path)
            default_base = path.resolve().parent
        elif isinstance(recipe, Recipe):
            default_base = Path.cwd()
        else:
            raise TypeError(f"recipe must be a path or a hf_recycle.Recipe, got {type(recipe).__name__}")
        if trials is not None:
            if trials <= 0:
                raise RecycleCallbackError(f"trials must be a positive number, got {trials}")
            recipe = recipe.model_copy(
                update={"search": recipe.search.model_copy(update={"trials": int(trials)})}
            )
        if push_to is not None:
            spec = recipe.push.model_dump(by_alias=True) if recipe.push else {}
            recipe = recipe.model_copy(update={"push": PushSpec.model_validate({**spec, "repo": push_to})})
            push = True
        if push and recipe.push is None:
            raise RecycleCallbackError(
                f"push=True but recipe '{recipe.name}' has no push: section: add one, or pass push_to='org/name'"
            )
        if not recipe.tasks:
            raise RecycleCallbackError(
                f"recipe '{recipe.name}' has no tasks: RecycleCallback scores the merge candidates on the "
                "recipe's tasks; add at least one under tasks:"
            )
        self.recipe = recipe
        self.push = push
        self.keep_checkpoints = keep_checkpoints
        self.include_final = include_final
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.tokenizer = tokenizer
        self.base_dir = Path(base_dir) if base_dir is not None else default_base
        self.device = device
        self.checkpoints: list[RecordedCheckpoint] = []
        self.results: dict[str, Any] | None = None
        self._hub_repo: str | None = None

    # --- paths ------------------------------------------------------------------------------

    def results_dir(self, args: Any) -> Path:
        """Where the merged model, card and results go for the Trainer ``args``."""
        return self.output_dir or Path(args.output_dir) / RESULTS_DIR

    @staticmethod
    def work_dir(args: Any) -> Path:
        """``output_dir/_recycle``: the final weights and the kept checkpoints."""
        return Path(args.output_dir) / WORK_DIR

    # --- events -----------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):  # noqa: ANN001, ANN201
        """Check that the run can be recycled; warn about rotation; pick up checkpoints of a resumed run."""
        if not state.is_world_process_zero:
            return
        if processing_class is None and self.tokenizer is None:
            raise RecycleCallbackError(
                "RecycleCallback needs a tokenizer to score the recipe's tasks, and the Trainer has none: pass "
                "processing_class=tokenizer to the Trainer (it is then saved in every checkpoint), or "
                "tokenizer=... to RecycleCallback"
            )
        limit = args.save_total_limit
        hub_keeps = args.push_to_hub and self._hub_strategy(args) in ("every_save", "all_checkpoints")
        if limit and not self.keep_checkpoints:
            if hub_keeps:
                logger.info(
                    "save_total_limit=%d: rotated checkpoints are recycled from the Hub (hub_strategy=%s)",
                    limit,
                    self._hub_strategy(args),
                )
            else:
                logger.warning(
                    "save_total_limit=%d: the Trainer deletes older checkpoints, and a deleted checkpoint leaves "
                    "the recycling pool (only the last %d and the final weights remain); pass "
                    "RecycleCallback(keep_checkpoints=True) to keep their weights (hard links, no optimizer "
                    "state) in %s",
                    limit,
                    limit,
                    self.work_dir(args) / "pool",
                )
        if state.global_step > 0:  # resumed: the run's earlier checkpoints belong to the pool
            self._pick_up_existing(args, state.global_step)

    def on_save(self, args, state, control, model=None, processing_class=None, **kwargs):  # noqa: ANN001, ANN201
        """Record the ``checkpoint-N`` folder the Trainer just wrote (and where it went on the Hub)."""
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not _has_weights(folder):
            logger.warning("RecycleCallback: no weights in %s after a save: not recorded", folder)
            return
        if self.tokenizer is not None and processing_class is None and not _has_tokenizer(folder):
            self.tokenizer.save_pretrained(folder)
        kept = None
        if self.keep_checkpoints:
            kept = self.work_dir(args) / "pool" / folder.name
            _link_model_files(folder, kept)
        hub_spec, title = self._hub_location(args, state, folder.name)
        record = RecordedCheckpoint(state.global_step, folder, _kind_of(folder), kept, hub_spec, title)
        self.checkpoints = [c for c in self.checkpoints if c.step != record.step] + [record]
        logger.info("RecycleCallback: recorded %s (%s)", folder, record.kind)

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):  # noqa: ANN001, ANN201
        """Save the final weights, search the merge over the pool, write and log the results, push."""
        if not state.is_world_process_zero:
            return
        pool = self._pool(args)
        final = self._save_final(args, state, model, processing_class) if self.include_final else None
        if final is not None:
            pool.append(final)
        specs = [s for s in [*self.recipe.checkpoints, *(c.spec() for c in pool)] if s is not None]
        out = self.results_dir(args)
        out.mkdir(parents=True, exist_ok=True)
        (out / POOL_FILE).write_text(
            json.dumps({"checkpoints": [c.to_json() for c in pool], "specs": specs}, indent=2) + "\n"
        )
        if len(specs) < 2:
            logger.warning(
                "RecycleCallback: %d checkpoint(s) in the pool, and a merge needs at least 2: nothing recycled. "
                "Save more often (save_steps) or keep rotated checkpoints (keep_checkpoints=True)",
                len(specs),
            )
            return
        self.results = self._recycle(specs, out)
        self._log_scores(args, state, control, self.results)

    # --- recording --------------------------------------------------------------------------

    @staticmethod
    def _hub_strategy(args: Any) -> str:
        strategy = args.hub_strategy
        return str(getattr(strategy, "value", strategy))

    def _hub_location(self, args: Any, state: Any, name: str) -> tuple[str | None, str | None]:
        """Where the Trainer pushed ``checkpoint-N`` (``all_checkpoints``) or the commit title (``every_save``)."""
        strategy = self._hub_strategy(args)
        if not args.push_to_hub or strategy not in ("every_save", "all_checkpoints"):
            return None, None
        if self._hub_repo is None:
            from transformers import Trainer

            trainer = _find_caller(Trainer)
            self._hub_repo = getattr(trainer, "hub_model_id", None) or args.hub_model_id
        if self._hub_repo is None:
            logger.warning("RecycleCallback: cannot tell the Hub repo of this run (set hub_model_id)")
            return None, None
        revision = args.hub_revision or "main"
        if strategy == "all_checkpoints":
            return f"{self._hub_repo}@{revision}:{name}", None
        save = str(getattr(args.save_strategy, "value", args.save_strategy))
        title = (
            f"Training in progress, step {state.global_step}"
            if save == "steps"
            else f"Training in progress, epoch {int(state.epoch or 0)}"
        )
        return None, title

    def _pick_up_existing(self, args: Any, step: int) -> None:
        """Record the ``checkpoint-N`` folders (and kept copies) up to ``step`` of a resumed run."""
        found: dict[int, RecordedCheckpoint] = {}
        for root in (self.work_dir(args) / "pool", Path(args.output_dir)):
            if not root.is_dir():
                continue
            for folder in root.iterdir():
                match = _CHECKPOINT_RE.match(folder.name)
                if match and int(match.group(1)) <= step and _has_weights(folder):
                    n = int(match.group(1))
                    path = Path(args.output_dir) / folder.name
                    kept = (
                        folder if root != Path(args.output_dir) else (found[n].kept if n in found else None)
                    )
                    found[n] = RecordedCheckpoint(n, path, _kind_of(folder), kept)
        known = {c.step for c in self.checkpoints}
        self.checkpoints += [found[n] for n in sorted(found) if n not in known]
        if found:
            logger.info("RecycleCallback: resumed run, %d earlier checkpoint(s) in the pool", len(found))

    def _pool(self, args: Any) -> list[RecordedCheckpoint]:
        """The recorded checkpoints still readable (folder, kept copy, or Hub), in step order."""
        records = sorted(self.checkpoints, key=lambda c: c.step)
        if any(r.spec() != str(r.path) and (r.hub_spec or r.hub_commit_title) for r in records):
            self._wait_for_trainer_push()
        records = self._find_hub_commits(records)
        pool, gone = [], []
        for record in records:
            (pool if record.spec() is not None else gone).append(record)
        if gone:
            logger.warning(
                "RecycleCallback: %d checkpoint(s) were deleted by save_total_limit and leave the pool: %s "
                "(pass keep_checkpoints=True to keep them)",
                len(gone),
                ", ".join(c.name for c in gone),
            )
        return pool

    @staticmethod
    def _wait_for_trainer_push() -> None:
        """Wait for the Trainer's Hub uploads in flight: a rotated checkpoint is read back from the Hub."""
        from transformers import Trainer

        push = getattr(_find_caller(Trainer), "push_in_progress", None)
        if push is not None and not push.is_done():
            logger.info("RecycleCallback: waiting for the Trainer's checkpoint uploads to finish")
            push.wait_until_done()

    def _find_hub_commits(self, records: list[RecordedCheckpoint]) -> list[RecordedCheckpoint]:
        """For ``every_save`` records whose folder is gone, find the sha of the commit that pushed them."""
        wanted = [r for r in records if r.hub_commit_title and r.spec() is None]
        if not wanted or self._hub_repo is None:
            return records
        try:
            from huggingface_hub import HfApi

            commits = HfApi().list_repo_commits(self._hub_repo)
        except Exception as exc:  # the Hub is a fallback here: a failure only shrinks the pool
            logger.warning("RecycleCallback: cannot list the commits of %s: %s", self._hub_repo, exc)
            return records
        by_title = {c.title: c.commit_id for c in reversed(commits)}  # newest commit wins a repeated title
        out = []
        for record in records:
            sha = by_title.get(record.hub_commit_title) if record in wanted else None
            if sha:
                record = RecordedCheckpoint(
                    record.step, record.path, record.kind, record.kept, f"{self._hub_repo}@{sha}", None
                )
            out.append(record)
        return out

    # --- the final weights ------------------------------------------------------------------

    def _save_final(
        self, args: Any, state: Any, model: Any, processing_class: Any
    ) -> RecordedCheckpoint | None:
        """Save the weights at the end of training into ``_recycle/final`` unless the pool already has them."""
        last = max((c.step for c in self.checkpoints), default=None)
        if last == state.global_step:
            return None  # the last save was at the last step: checkpoint-N is the final model
        if args.load_best_model_at_end and state.best_model_checkpoint:
            logger.info(
                "RecycleCallback: load_best_model_at_end reloaded a checkpoint: no final weights to add"
            )
            return None
        if model is None:
            return None
        if getattr(args, "deepspeed", None) or getattr(args, "fsdp", None):
            logger.warning(
                "RecycleCallback: the model is sharded (FSDP/DeepSpeed), so the final weights cannot be saved "
                "from one process: only the Trainer's checkpoints are recycled (save at the last step to include "
                "the final weights)"
            )
            return None
        folder = self.work_dir(args) / "final"
        shutil.rmtree(folder, ignore_errors=True)
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer = processing_class if processing_class is not None else self.tokenizer
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        kind = _kind_of(folder)
        logger.info("RecycleCallback: saved the final weights (%s) to %s", kind, folder)
        return RecordedCheckpoint(-1, folder, kind)

    # --- recycling --------------------------------------------------------------------------

    def _recycle(self, specs: list[str], out: Path) -> dict[str, Any]:
        """Run the recipe's pipeline over ``specs`` into ``out``; return the content of ``results.json``."""
        from hf_recycle.pipeline import run
        from hf_recycle.recipe import OutputSpec

        recipe = _with_absolute_data_paths(self.recipe, self.base_dir).model_copy(
            update={
                "checkpoints": specs,
                "output": OutputSpec(dir=str(out), max_shard_size=self.recipe.output.max_shard_size),
            }
        )
        logger.info("RecycleCallback: recycling %d checkpoints into %s", len(specs), out)
        return run(recipe, push=self.push, output_dir=out, device=self.device).results

    def _log_scores(self, args: Any, state: Any, control: Any, results: dict[str, Any]) -> None:
        """Send the scores through the Trainer's log, so every reporter (TensorBoard, W&B...) gets them."""
        logs = scores_to_logs(results)
        if not logs:
            return
        from transformers import Trainer
        from transformers.trainer_callback import CallbackHandler

        trainer = _find_caller(Trainer)
        if trainer is not None:
            trainer.log(logs)
            return
        handler = _find_caller(CallbackHandler)
        state.log_history.append({**logs, "step": state.global_step})
        if handler is not None:
            handler.on_log(args, state, control, logs)
        else:
            logger.warning(
                "RecycleCallback: not called by a Trainer: the scores went to state.log_history only"
            )


def scores_to_logs(results: dict[str, Any]) -> dict[str, float]:
    """Flatten ``results.json`` into Trainer log scalars (``recycle/...``)."""
    logs: dict[str, float] = {}

    def add(prefix: str, scores: dict[str, Any] | None) -> None:
        for task, value in (scores or {}).items():
            if isinstance(value, int | float):
                logs[f"{prefix}/{task}"] = float(value)

    winner = results.get("winner") or {}
    add("recycle/search", winner.get("search"))
    add("recycle/test", winner.get("test"))
    for name, entry in (results.get("baselines") or {}).items():
        add(f"recycle/{name}/search", entry.get("search"))
        add(f"recycle/{name}/test", entry.get("test"))
    for i, weight in enumerate(winner.get("weights") or []):
        logs[f"recycle/weight/{i}"] = float(weight)
    return logs


def _absolute(value: Any, base_dir: Path) -> Any:
    if isinstance(value, str):
        return value if Path(value).is_absolute() else str(base_dir / value)
    if isinstance(value, list):
        return [_absolute(v, base_dir) for v in value]
    if isinstance(value, dict):
        return {k: _absolute(v, base_dir) for k, v in value.items()}
    return value


def _with_absolute_data_paths(recipe: Any, base_dir: Path) -> Any:
    """``recipe`` with its tasks' relative local data paths made absolute against ``base_dir``.

    The pipeline resolves a Recipe object's task paths against the current folder; the
    callback's recipe came from a file (or ``base_dir=``), so its paths are fixed here.
    """
    tasks = []
    for task in recipe.tasks:
        data = task.data
        update: dict[str, Any] = {}
        if data.data_files is not None:
            update["data_files"] = _absolute(data.data_files, base_dir)
        if data.data_dir is not None:
            update["data_dir"] = _absolute(data.data_dir, base_dir)
        if not Path(data.path).is_absolute() and (base_dir / data.path).exists():
            update["path"] = str(base_dir / data.path)
        tasks.append(task.model_copy(update={"data": data.model_copy(update=update)}) if update else task)
    return recipe.model_copy(update={"tasks": tasks})
