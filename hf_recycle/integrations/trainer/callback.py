"""``RecycleCallback``: recycle the checkpoints of a ``transformers.Trainer`` run in one line.

::

    trainer = Trainer(..., callbacks=[RecycleCallback("recipe.yaml", trials=40)])
    trainer.train()   # then: output_dir/_recycled/model/ (weights + README.md card), results.json

While training, :meth:`RecycleCallback.on_save` records each ``checkpoint-N`` folder the
Trainer writes (full weights, or a PEFT adapter when the model is a ``PeftModel``) and,
with ``push_to_hub`` and ``hub_strategy`` ``every_save`` or ``all_checkpoints``, where
the checkpoint went on the Hub. At the end, :meth:`RecycleCallback.on_train_end` saves
the final weights (when the last save was not at the last step), runs the recipe's
search over the recorded checkpoints plus the final weights, writes the merged model,
its card and ``results.json`` to ``output_dir/_recycled`` (which the Trainer's own pushes
leave out, as every folder of ``output_dir`` starting with ``_``), logs the scores through
the Trainer's log (so TensorBoard, W&B and the other reporters get them) and pushes when
asked.

The Hub: every call the callback makes (resolving and downloading checkpoints, reading a
repo's visibility, pushing) uses the Trainer's ``hub_token`` when set (else huggingface_hub's
``HF_TOKEN`` or login); it is never printed, logged or written. The merge is pushed private
when the Trainer's repo or a source checkpoint's repo is private, unless ``private=`` (or the
recipe's ``push.private``) says otherwise; a push into an existing repo never changes its
visibility, and a private push into a public repo is refused (at train begin when the
Trainer's repo or ``private=True`` makes it private). The pushed folder names a checkpoint by its Hub commit when the Trainer pushed it
(``org/run@<sha>:checkpoint-N``), else relative to ``output_dir`` (``./checkpoint-N``,
``./_recycle/final``), and holds no absolute local path.

Rotated checkpoints (``save_total_limit``): the Trainer deletes old ``checkpoint-N``
folders. By default they leave the pool (a warning at train begin says so), unless
they were pushed with ``hub_strategy="all_checkpoints"`` (the ``checkpoint-N``
subfolder of the commit that pushed it) or ``every_save`` (the commit that pushed it):
the callback takes the commit sha from the Trainer's own upload job. The Trainer uploads
in the background and deletes a rotated folder without waiting for its upload (which
then fails: the folder is gone), and it skips the push of a save while the previous
upload runs; so in these two cases the callback waits, before each save, for the
Trainer's uploads in flight. With ``keep_checkpoints=True`` each checkpoint's model
files (weights, configs, tokenizer; not the optimizer state) are hard-linked at save
time into ``output_dir/_recycle/pool/checkpoint-N`` (copied where hard links are
impossible), so rotation deletes only the Trainer's folder; the weights stay on disk
until you delete that pool (and no save waits for an upload). Folders under
``output_dir`` starting with ``_`` are never uploaded by the Trainer's Hub pushes.

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
import weakref
from concurrent import futures
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from hf_recycle.errors import HfRecycleError, RecycleCallbackError
from hf_recycle.integrations.trainer.records import (
    RecordedCheckpoint,
    has_tokenizer,
    has_weights,
    kind_of,
    link_model_files,
)

logger = logging.getLogger(__name__)

__all__ = ["RecycleCallback", "RecordedCheckpoint"]

WORK_DIR = "_recycle"  # under the Trainer's output_dir; "_*" is never pushed by the Trainer
RESULTS_DIR = "_recycled"  # "_*": the Trainer's push_to_hub() leaves it out
POOL_FILE = "pool.json"
HUB_STRATEGIES = ("every_save", "all_checkpoints")  # the Trainer's strategies that keep every save on the Hub
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def _find_caller(cls: type, depth: int = 12) -> Any:
    """The nearest ``self`` of type ``cls`` among the calling frames (the Trainer that fires the event).

    A ``TrainerCallback`` is not given its Trainer; the callback needs it for the Trainer's
    Hub upload jobs, its repo id and its ``log``.
    """
    frame = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, cls):
            return candidate
        frame = frame.f_back
    return None


@dataclass(frozen=True)
class _Upload:
    """The Trainer's upload job of one save: its future returns the commit (``CommitInfo``)."""

    step: int
    repo_id: str
    job: futures.Future
    subfolder: str | None


class RecycleCallback(TrainerCallback):
    """Recycle the checkpoints of a Trainer run into one optimized merge, at the end of training.

    Args:
        recipe: A recipe file or :class:`~hf_recycle.recipe.Recipe`. Its ``tasks`` score the
            candidates; its ``checkpoints`` may be empty (any listed are added to the pool,
            before the run's own).
        trials: Override of ``search.trials``.
        push_to: Push the merged model to this Hub repo (``org/name``); implies ``push``.
        push: Push to the recipe's ``push.repo`` (or ``push_to``) when done.
        private: Push the merge private (``True``) or public (``False``), over the recipe's
            ``push.private``. Unset (``None``), it is private when the Trainer's repo or a
            source checkpoint's repo is private.
        keep_checkpoints: Keep the model files of checkpoints that ``save_total_limit`` rotates
            away (hard links under ``output_dir/_recycle/pool``), so they stay in the pool.
        include_final: Add the weights at the end of training to the pool (saved to
            ``output_dir/_recycle/final`` unless the last save was at the last step).
        output_dir: Where the merged model, card and results go (default:
            ``<Trainer output_dir>/_recycled``).
        tokenizer: Tokenizer to score with when the Trainer has no ``processing_class``; it
            is saved into checkpoint folders that lack one.
        base_dir: Folder that the tasks' relative data (and metric) paths resolve against
            (default: the recipe file's folder, or the current folder when the callback is
            made, for a Recipe object).
        device: Where the search runs the candidates (default: the recipe's ``merge.device``).

    Raises:
        RecipeError: The recipe file is invalid (raised here, before training starts).
        RecycleCallbackError: No task to score, or ``private`` without a push; at train begin:
            no tokenizer, or a private push into an existing public repo.
    """

    def __init__(
        self,
        recipe: Any,
        *,
        trials: int | None = None,
        push_to: str | None = None,
        push: bool = False,
        private: bool | None = None,
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
        if private is not None:
            if not push:
                raise RecycleCallbackError(
                    f"private={private} applies to a push, and this callback does not push: pass push_to='org/name' "
                    "(or push=True with a push: section in the recipe)"
                )
            recipe = recipe.model_copy(
                update={"push": recipe.push.model_copy(update={"private": bool(private)})}
            )
        if not recipe.tasks:
            raise RecycleCallbackError(
                f"recipe '{recipe.name}' has no tasks: RecycleCallback scores the merge candidates on the "
                "recipe's tasks; add at least one under tasks:"
            )
        resolved_base = Path(base_dir).resolve() if base_dir is not None else default_base
        if recipe.card is not None:  # a bad card template fails now, not after training
            from hf_recycle.final.card import template_path, template_problems

            errors, _ = template_problems(template_path(recipe.card.template, resolved_base))
            if errors:
                raise RecycleCallbackError(f"recipe '{recipe.name}' card.template: " + "; ".join(errors))
        self.recipe = recipe
        self.push = push
        self.keep_checkpoints = keep_checkpoints
        self.include_final = include_final
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.tokenizer = tokenizer
        self.base_dir = resolved_base
        self.device = device
        self.checkpoints: list[RecordedCheckpoint] = []
        self.results: dict[str, Any] | None = None
        self._trainer_ref: weakref.ref | None = None
        self._uploads: list[_Upload] = []  # the Trainer's upload jobs not yet turned into hub_spec
        self._seen_jobs: set[futures.Future] = set()
        self._trainer_repo_private: bool | None = None  # asked once

    # --- paths ------------------------------------------------------------------------------

    def results_dir(self, args: Any) -> Path:
        """Where the merged model, card and results go for the Trainer ``args``."""
        return self.output_dir or Path(args.output_dir) / RESULTS_DIR

    @staticmethod
    def work_dir(args: Any) -> Path:
        """``output_dir/_recycle``: the final weights and the kept checkpoints."""
        return _absolute_output_dir(args) / WORK_DIR

    # --- events -----------------------------------------------------------------------------

    def on_init_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        """Remember the Trainer that this callback was given to."""
        self._remember_trainer()

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):  # noqa: ANN001, ANN201
        """Check that the run can be recycled; warn about rotation; pick up checkpoints of a resumed run."""
        if not state.is_world_process_zero:
            return
        self._remember_trainer()
        if processing_class is None and self.tokenizer is None:
            raise RecycleCallbackError(
                "RecycleCallback needs a tokenizer to score the recipe's tasks, and the Trainer has none: pass "
                "processing_class=tokenizer to the Trainer (it is then saved in every checkpoint), or "
                "tokenizer=... to RecycleCallback"
            )
        limit = args.save_total_limit
        if limit and not self.keep_checkpoints:
            if self._hub_keeps_saves(args):
                logger.info(
                    "save_total_limit=%d: rotated checkpoints are recycled from the Hub (hub_strategy=%s); "
                    "each save waits for the Trainer's upload of the previous one",
                    limit,
                    _hub_strategy(args),
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
        self._check_push_target(args)
        if state.global_step > 0:  # resumed: the run's earlier checkpoints belong to the pool
            self._pick_up_existing(args, state.global_step)

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        """Before a save that rotates a checkpoint recycled from the Hub, let its upload finish."""
        save_best = _strategy_name(args.save_strategy) == "best" and control.should_evaluate
        if state.is_world_process_zero and (control.should_save or save_best):
            self._before_save(args)

    def on_epoch_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        """As :meth:`on_step_end`, for the saves at the end of an epoch."""
        self.on_step_end(args, state, control, **kwargs)

    def on_save(self, args, state, control, model=None, processing_class=None, **kwargs):  # noqa: ANN001, ANN201
        """Record the ``checkpoint-N`` folder the Trainer just wrote (and its upload to the Hub)."""
        if not state.is_world_process_zero:
            return
        folder = _absolute_output_dir(args) / f"checkpoint-{state.global_step}"
        if not has_weights(folder):
            logger.warning("RecycleCallback: no weights in %s after a save: not recorded", folder)
            return
        if self.tokenizer is not None and processing_class is None and not has_tokenizer(folder):
            self.tokenizer.save_pretrained(folder)
        kept = None
        if self.keep_checkpoints:
            kept = self.work_dir(args) / "pool" / folder.name
            link_model_files(folder, kept)
        record = RecordedCheckpoint(state.global_step, folder, kind_of(folder), kept)
        self.checkpoints = [c for c in self.checkpoints if c.step != record.step] + [record]
        logger.info("RecycleCallback: recorded %s (%s)", folder, record.kind)
        if self._hub_keeps_saves(args):
            self._track_upload(args, state.global_step)

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):  # noqa: ANN001, ANN201
        """Save the final weights, search the merge over the pool, write and log the results, push."""
        if not state.is_world_process_zero:
            return
        if self._hub_keeps_saves(args):
            self._wait_for_uploads("before recycling")
        pool = self._pool()
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
        self.results = self._recycle(specs, out, args, pool)
        self._log_scores(state, self.results)

    # --- the Trainer and its Hub uploads ----------------------------------------------------

    def _remember_trainer(self) -> None:
        if self._trainer_ref is None or self._trainer_ref() is None:
            from transformers import Trainer

            trainer = _find_caller(Trainer)
            if trainer is not None:
                self._trainer_ref = weakref.ref(trainer)

    def _trainer(self) -> Any:
        """The Trainer running this callback (None when not called by one)."""
        self._remember_trainer()
        return self._trainer_ref() if self._trainer_ref is not None else None

    def _hub_keeps_saves(self, args: Any) -> bool:
        """The Trainer pushes every save where it stays (a commit, or a subfolder of one)."""
        return bool(args.push_to_hub) and _hub_strategy(args) in HUB_STRATEGIES

    def _before_save(self, args: Any) -> None:
        """Wait for the Trainer's uploads in flight when the coming save may rotate a checkpoint away.

        The Trainer deletes rotated folders without waiting for their upload (the upload then
        fails: its folder is gone) and skips the push of a save while an upload runs; a
        checkpoint that is neither on disk nor on the Hub leaves the pool.
        """
        if args.save_total_limit and not self.keep_checkpoints and self._hub_keeps_saves(args):
            self._wait_for_uploads("before the next save rotates their folders")

    def _track_upload(self, args: Any, step: int) -> None:
        """Take the upload job the Trainer just started for ``checkpoint-step`` (it returns the commit)."""
        trainer = self._trainer()
        if trainer is None:
            logger.warning(
                "RecycleCallback: not called by a Trainer: the Hub upload of checkpoint-%d cannot be tracked",
                step,
            )
            return
        push = getattr(trainer, "push_in_progress", None)
        jobs = [job for job in (push.jobs if push is not None else []) if job not in self._seen_jobs]
        self._seen_jobs.update(jobs)
        strategy = _hub_strategy(args)
        # every_save: one job, the output_dir root; all_checkpoints: the root, then checkpoint-N
        wanted = 2 if strategy == "all_checkpoints" else 1
        repo_id = trainer.hub_model_id
        if len(jobs) < wanted:
            logger.info(
                "RecycleCallback: the Trainer did not push checkpoint-%d (hub_strategy=%s; an upload was still "
                "running): it stays in the pool only while its folder (or kept copy) is on disk",
                step,
                strategy,
            )
            return
        subfolder = f"checkpoint-{step}" if strategy == "all_checkpoints" else None
        self._uploads.append(_Upload(step, repo_id, jobs[wanted - 1], subfolder))

    def _wait_for_uploads(self, why: str) -> None:
        """Wait for the Trainer's uploads in flight, then pin each finished save to its commit."""
        trainer = self._trainer()
        push = getattr(trainer, "push_in_progress", None)
        pending = {u.job for u in self._uploads} | set(push.jobs if push is not None else [])
        pending = {job for job in pending if not job.done()}
        if pending:
            logger.info("RecycleCallback: waiting for %d Hub upload(s) of the Trainer %s", len(pending), why)
            futures.wait(pending)
        for upload in self._uploads:
            self._pin_to_commit(upload)
        self._uploads = []

    def _pin_to_commit(self, upload: _Upload) -> None:
        """Set ``hub_spec`` of the save that ``upload`` pushed to its commit (a warning when it failed)."""
        error = upload.job.exception()
        if error is not None:
            logger.warning(
                "RecycleCallback: the Trainer's upload of checkpoint-%d to %s failed (%s: %s): it stays in the "
                "pool only while its folder (or kept copy) is on disk",
                upload.step,
                upload.repo_id,
                type(error).__name__,
                error,
            )
            return
        commit = upload.job.result().oid
        spec = f"{upload.repo_id}@{commit}" + (f":{upload.subfolder}" if upload.subfolder else "")
        self.checkpoints = [
            replace(c, hub_spec=spec) if c.step == upload.step else c for c in self.checkpoints
        ]

    # --- the Hub: token, the Trainer's repo, visibility of the push -------------------------

    @staticmethod
    def _token(args: Any) -> str | None:
        """The Trainer's ``hub_token`` (None: huggingface_hub's own, ``HF_TOKEN`` or the login)."""
        return getattr(args, "hub_token", None) or None

    def _training_repo(self, args: Any) -> str | None:
        """The repo the Trainer pushes to, or None when it does not push."""
        if not args.push_to_hub:
            return None
        return getattr(self._trainer(), "hub_model_id", None) or args.hub_model_id

    def _push_recipe(self, args: Any) -> Any:
        """The recipe, with ``push.private: true`` when it is unset and the Trainer's repo is private."""
        push = self.recipe.push
        repo = self._training_repo(args)
        if not self.push or push is None or push.private is not None or repo is None:
            return self.recipe
        if self._trainer_repo_private is None:
            from hf_recycle.hub.push import repo_visibility

            try:
                visibility = repo_visibility(repo, endpoint=self.recipe.endpoint, token=self._token(args))
            except HfRecycleError as exc:
                logger.warning(
                    "RecycleCallback: cannot read the visibility of %s (%s): taking it as private", repo, exc
                )
                visibility = None
            self._trainer_repo_private = visibility != "public"  # None: not visible with this token
        if not self._trainer_repo_private:
            return self.recipe
        logger.info("RecycleCallback: the Trainer's repo %s is private: the merge is pushed private", repo)
        return self.recipe.model_copy(update={"push": push.model_copy(update={"private": True})})

    def _check_push_target(self, args: Any) -> None:
        """Refuse, before training, a private push into an existing public repo (it would publish the merge)."""
        if not self.push:
            return
        from hf_recycle.hub.push import repo_visibility

        push = self._push_recipe(args).push
        if not push.private:
            return
        try:
            visibility = repo_visibility(push.repo, endpoint=self.recipe.endpoint, token=self._token(args))
        except HfRecycleError as exc:
            logger.warning(
                "RecycleCallback: cannot check the visibility of %s before training: %s", push.repo, exc
            )
            return
        if visibility == "public":
            why = (
                "private=True"
                if self.recipe.push.private
                else f"the Trainer's repo {self._training_repo(args)} is private"
            )
            raise RecycleCallbackError(
                f"the merge would be pushed private ({why}) but '{push.repo}' exists and is public, and a push never "
                f"changes a repo's visibility: push to a new or private repo (push_to='org/name'), make '{push.repo}' "
                "private on the Hub, or pass private=False to publish the merge"
            )

    # --- the pool ---------------------------------------------------------------------------

    def _pick_up_existing(self, args: Any, step: int) -> None:
        """Record the ``checkpoint-N`` folders (and kept copies) up to ``step`` of a resumed run."""
        output_dir = _absolute_output_dir(args)
        found: dict[int, RecordedCheckpoint] = {}
        for root in (self.work_dir(args) / "pool", output_dir):
            if not root.is_dir():
                continue
            for folder in root.iterdir():
                match = _CHECKPOINT_RE.match(folder.name)
                if match and int(match.group(1)) <= step and has_weights(folder):
                    n = int(match.group(1))
                    kept = folder if root != output_dir else (found[n].kept if n in found else None)
                    found[n] = RecordedCheckpoint(n, output_dir / folder.name, kind_of(folder), kept)
        known = {c.step for c in self.checkpoints}
        self.checkpoints += [found[n] for n in sorted(found) if n not in known]
        if found:
            logger.info("RecycleCallback: resumed run, %d earlier checkpoint(s) in the pool", len(found))

    def _pool(self) -> list[RecordedCheckpoint]:
        """The recorded checkpoints still readable (folder, kept copy, or Hub), in step order."""
        pool, gone = [], []
        for record in sorted(self.checkpoints, key=lambda c: c.step):
            (pool if record.spec() is not None else gone).append(record)
        if gone:
            logger.warning(
                "RecycleCallback: %d checkpoint(s) were deleted by save_total_limit and leave the pool: %s "
                "(pass keep_checkpoints=True to keep them)",
                len(gone),
                ", ".join(c.name for c in gone),
            )
        return pool

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
        kind = kind_of(folder)
        logger.info("RecycleCallback: saved the final weights (%s) to %s", kind, folder)
        return RecordedCheckpoint(-1, folder, kind)

    # --- recycling --------------------------------------------------------------------------

    def _recycle(
        self, specs: list[str], out: Path, args: Any, pool: list[RecordedCheckpoint]
    ) -> dict[str, Any]:
        """Run the recipe's pipeline over ``specs`` into ``out``; return the content of ``results.json``.

        The pushed folder names each checkpoint the Trainer pushed by its Hub commit (its local
        folder is read), and any other local path relative to ``output_dir``.
        """
        from hf_recycle.pipeline import run
        from hf_recycle.portable import PortableNames
        from hf_recycle.recipe import OutputSpec

        recipe = self._push_recipe(args).model_copy(
            update={
                "checkpoints": specs,
                "output": OutputSpec(dir=str(out), max_shard_size=self.recipe.output.max_shard_size),
            }
        )
        on_hub = {
            str(folder): record.hub_spec
            for record in pool
            if record.hub_spec
            for folder in (record.path, record.kept)
            if folder is not None
        }
        names = PortableNames((_absolute_output_dir(args), self.base_dir), on_hub)
        logger.info("RecycleCallback: recycling %d checkpoints into %s", len(specs), out)
        result = run(
            recipe,
            push=self.push,
            output_dir=out,
            base_dir=self.base_dir,
            device=self.device,
            token=self._token(args),
            names=names,
        )
        return result.results

    def _log_scores(self, state: Any, results: dict[str, Any]) -> None:
        """Send the scores through the Trainer's log, so every reporter (TensorBoard, W&B...) gets them."""
        logs = scores_to_logs(results)
        trainer = self._trainer()
        if trainer is not None:
            trainer.log(logs)
        else:
            state.log_history.append({**logs, "step": state.global_step})
            logger.warning(
                "RecycleCallback: not called by a Trainer: the scores went to state.log_history only"
            )


def _absolute_output_dir(args: Any) -> Path:
    """The Trainer's ``output_dir``, absolute (checkpoint paths outlive a change of directory)."""
    return Path(os.path.abspath(args.output_dir))


def _strategy_name(value: Any) -> str:
    return str(getattr(value, "value", value))


def _hub_strategy(args: Any) -> str:
    return _strategy_name(args.hub_strategy)


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
