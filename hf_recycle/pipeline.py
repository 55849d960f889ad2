"""``hf-recycle run``: a recipe end to end.

resolve and download the checkpoints once (:mod:`hf_recycle.recipe_inputs`) -> search the
merge weights over those folders (resuming the study) -> stream the winner's merge to disk
from the same folders (each Pareto member for ``objective: pareto``) -> lock file,
results and model card next to the weights -> push when asked.

Layout of ``output.dir`` (``outputs/<name>`` by default)::

    study.db  results.json  results.md  plots/  checkpoints.lock.json   the search
    model/                       the merged winner: a folder ready for the Hub (the baseline the
                                 search returned when no optimized merge beat it: results.selection)
    pareto/trial-<N>/            objective pareto: one such folder per front member

Every model folder holds the weights (safetensors shards), ``config.json``, the tokenizer,
``merge_config.json``, ``checkpoints.lock.json``, ``README.md`` (the model card),
``results.json``, ``results.md``, ``plots/`` and ``recipe.yaml`` (the exact recipe). A model
folder is what gets pushed: it names local things by :class:`~hf_recycle.portable.PortableNames`
(no absolute path of this machine). Re-running resumes the study, skips a final merge already on
disk and re-renders the card.

A push creates the repo private when ``push.private`` says so, or, when unset, when a source
checkpoint's repo is private; a push into an existing repo never changes its visibility.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_recycle._search.outcome import Candidate, SearchResults
from hf_recycle.errors import RecipeError
from hf_recycle.final.folders import (
    RECIPE_FILENAME,
    Published,
    card_template,
    finish_model_folder,
    push_all,
)
from hf_recycle.hub.pins import PinnedCheckpoint
from hf_recycle.portable import PortableNames

logger = logging.getLogger(__name__)

__all__ = ["run", "RunPlan", "RunResult", "MODEL_DIRNAME", "PARETO_DIRNAME"]

MODEL_DIRNAME = "model"
PARETO_DIRNAME = "pareto"


@dataclass(frozen=True)
class RunPlan:
    """What ``run`` will do (``--dry-run`` prints it): pins, trial budget, outputs, push target."""

    name: str
    pins: tuple[PinnedCheckpoint, ...]
    base: PinnedCheckpoint | None
    trials: int
    sampler: str
    objective: str
    storage: str
    study: str
    output_dir: Path
    tasks: tuple[str, ...]
    push: dict[str, Any] | None
    memory: str = ""

    def describe(self) -> str:
        """The plan as text, one fact per line."""
        lines = [f"recipe '{self.name}': {len(self.pins)} checkpoint(s)"]
        lines += [
            f"  {i}: {pin.display}  [{pin.commit or 'local'}]  {pin.kind}" for i, pin in enumerate(self.pins)
        ]
        if self.base is not None:
            lines.append(f"base: {self.base.display}  [{self.base.commit or 'local'}]  {self.base.kind}")
        lines.append(
            f"search: {self.sampler}, {self.trials} trials (baselines included), objective {self.objective}; "
            f"study '{self.study}' in {self.storage} (resumed when it exists)"
        )
        lines.append(f"tasks: {', '.join(self.tasks)}")
        out = self.output_dir
        lines.append(f"outputs: {out}/ (results.json, results.md, plots/, checkpoints.lock.json, study)")
        if self.objective == "pareto":
            lines.append(f"merged models: {out / PARETO_DIRNAME}/trial-<N>/ (one per Pareto member)")
        else:
            lines.append(
                f"merged model: {out / MODEL_DIRNAME}/ (weights, README.md model card, lock file, results)"
            )
        if self.push:
            extra = "; Pareto members also to branches pareto-trial-<N>" if self.objective == "pareto" else ""
            lines.append(f"push: {self.push['repo']} (branch {self.push['branch']}){extra}")
        if self.memory:
            lines.append(self.memory)
        lines.append("nothing was downloaded or computed (--dry-run)")
        return "\n".join(lines)


@dataclass
class RunResult:
    """What ``run`` did.

    Attributes:
        output_dir: The run's output folder.
        results: The search's results (``results.json``).
        model_dirs: The merged model folders (the winner first).
        pushes: One :class:`~hf_recycle.hub.push.PushResult` per push made.
    """

    output_dir: Path
    results: SearchResults
    model_dirs: list[Path]
    pushes: list[Any] = field(default_factory=list)


def _load(
    recipe: Any, base_dir: str | Path | None = None, trials: int | None = None
) -> tuple[Any, str, Path, str]:
    """``(recipe, exact text, base dir, display path)`` of a path or a Recipe object.

    The base dir is ``base_dir`` when given, else the recipe file's folder, else the
    current folder (as in :func:`hf_recycle._search.api.prepare`). A file is checked with
    :func:`hf_recycle.preflight.load_recipe`: every problem at once, before anything runs.
    """
    from hf_recycle.preflight import load_recipe

    if isinstance(recipe, str | Path):
        path = Path(recipe)
        base = Path(base_dir) if base_dir else path.resolve().parent
        parsed = load_recipe(path, base_dir=base, trials=trials)
        return parsed, path.read_text(encoding="utf-8"), base, str(path)
    return recipe, _dump(recipe), Path(base_dir) if base_dir else Path.cwd(), RECIPE_FILENAME


def _dump(recipe: Any) -> str:
    """A Recipe object as recipe YAML."""
    import yaml

    return yaml.safe_dump(recipe.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False)


def _command(path: str, *, push: bool, trials: int | None, storage: str | None, endpoint: str | None) -> str:
    from hf_recycle._search.study import redact_url

    parts = ["hf-recycle", "run", path]
    if trials is not None:
        parts += ["--trials", str(trials)]
    if storage:
        parts += ["--storage", redact_url(storage)]
    if endpoint:
        parts += ["--endpoint", endpoint]
    if push:
        parts.append("--push")
    return shlex.join(parts)


def _source_licenses(
    pins: list[PinnedCheckpoint], endpoint: str | None, token: str | bool | None
) -> dict[str, str | None]:
    """License in each source's README.md metadata (``None`` when there is none or it cannot be read)."""
    from huggingface_hub import ModelCard, hf_hub_download

    out: dict[str, str | None] = {}
    for pin in pins:
        key = pin.repo_id or str(pin.local_path)
        if key in out:
            continue
        try:
            if pin.is_local:
                readme = Path(str(pin.local_path)) / "README.md"
                if not readme.is_file():
                    out[key] = None
                    continue
            else:
                readme = Path(
                    hf_hub_download(
                        pin.repo_id, "README.md", revision=pin.commit, endpoint=endpoint, token=token
                    )
                )
            out[key] = ModelCard.load(readme, ignore_metadata_errors=True).data.get("license")
        except Exception as exc:  # a missing or unreadable card only means "license unknown"
            logger.debug("no license for %s: %s", key, exc)
            out[key] = None
    return out


def _resolve_base(recipe: Any, endpoint: str | None, token: str | bool | None) -> PinnedCheckpoint | None:
    from hf_recycle.errors import SpecError
    from hf_recycle.hub.resolve import resolve

    if recipe.base is None:
        return None
    pins = resolve([recipe.base], endpoint=endpoint, token=token)
    if len(pins) != 1:
        raise SpecError(
            f"base '{recipe.base}' expands to {len(pins)} checkpoints: the base must be one checkpoint"
        )
    return pins[0]


def _check_push(recipe: Any, push: bool) -> None:
    if push and recipe.push is None:
        raise RecipeError(
            f"--push was given but recipe '{recipe.name}' has no push: section: add e.g. "
            "push: {repo: my-org/my-merge}, or push later with hf-recycle push --repo ORG/NAME --from DIR"
        )


def plan(
    recipe: Any,
    *,
    push: bool = False,
    trials: int | None = None,
    storage: str | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    output_dir: str | Path | None = None,
) -> RunPlan:
    """Resolve the recipe's pins and describe the run, without downloading or computing anything."""
    from hf_recycle._search.study import default_storage_url, redact_url
    from hf_recycle.hub.resolve import resolve
    from hf_recycle.preflight import check_resolved

    recipe, _, _, _ = _load(recipe, trials=trials)
    endpoint = endpoint or recipe.endpoint
    out = Path(output_dir) if output_dir else recipe.output_dir
    _check_push(recipe, push)
    pins = resolve(recipe.checkpoints, endpoint=endpoint, token=token) if recipe.checkpoints else []
    check_resolved(recipe, len(pins), trials=trials)
    base = _resolve_base(recipe, endpoint, token)
    return RunPlan(
        name=recipe.name,
        pins=tuple(pins),
        base=base,
        trials=recipe.search.trials if trials is None else int(trials),
        sampler=recipe.search.sampler,
        objective=recipe.search.objective,
        storage=redact_url(storage or recipe.search.storage or default_storage_url(out)),
        study=recipe.search.study or recipe.name,
        output_dir=out,
        tasks=tuple(t.name for t in recipe.tasks),
        push=recipe.push.model_dump() if push and recipe.push else None,
        memory=_memory_plan_text(recipe, pins, base),
    )


def _memory_plan_text(recipe: Any, pins: list[PinnedCheckpoint], base: PinnedCheckpoint | None) -> str:
    """The search's memory plan from the local checkpoints' headers (Hub ones are not downloaded)."""
    from hf_recycle._merge.engine import align_tied_heads
    from hf_recycle._merge.inputs import open_inputs
    from hf_recycle._merge.methods import get_method
    from hf_recycle._search.live import pick_device
    from hf_recycle._search.memory import plan_recipe_memory
    from hf_recycle.errors import SearchMemoryError

    uses_base = base is not None and (
        get_method(recipe.merge.method).needs_base or any(p.kind == "lora" for p in pins)
    )
    local = [p for p in [*pins, *([base] if uses_base else [])] if p is not None]
    if len(pins) < 2 or not all(p.is_local for p in local):
        return "memory plan: made when the search starts (Hub checkpoints are not downloaded by --dry-run)"
    inputs = open_inputs([str(p.local_path) for p in pins], str(base.local_path) if uses_base else None)
    try:
        checkpoints, _ = align_tied_heads(inputs.checkpoints)
        device = pick_device(recipe.merge.device)
        return plan_recipe_memory(recipe, checkpoints, inputs.base, device).describe()
    except SearchMemoryError as exc:
        return f"memory plan: {exc}"
    finally:
        inputs.close()


def run(
    recipe: Any,
    *,
    push: bool = False,
    dry_run: bool = False,
    trials: int | None = None,
    storage: str | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    output_dir: str | Path | None = None,
    base_dir: str | Path | None = None,
    device: str | None = None,
    progress: bool = False,
    names: PortableNames | None = None,
    engine: str | None = None,
) -> RunResult | RunPlan:
    """Run a recipe end to end: search, final merge, model card, lock file, push.

    Args:
        recipe: A :class:`~hf_recycle.recipe.Recipe` or the path of a recipe file.
        push: Push the merged model to the recipe's ``push:`` target.
        dry_run: Only resolve the pins and return the :class:`RunPlan`.
        trials: Finished trials the study should hold (default: ``search.trials``).
        storage: Optuna storage URL (default: ``search.storage``, else ``<output>/study.db``).
        endpoint: Hub endpoint (default: the recipe's ``endpoint``, else ``HF_ENDPOINT``).
        token: Hub token for resolving and pushing (default: ``HF_TOKEN`` or the stored login).
        output_dir: Output folder (default: ``output.dir``).
        base_dir: Folder that the tasks' relative data (and metric) paths resolve against
            (default: the recipe file's folder; the current folder for a Recipe object).
        device: Where the search's live model runs (default: ``merge.device``).
        progress: Show a progress bar during the search.
        names: How the model folders name local paths and checkpoints (default: relative to
            ``base_dir``, else to the current folder).
        engine: The scoring engine of the search (``hf`` or ``vllm``) instead of the recipe's.

    Returns:
        The :class:`RunPlan` with ``dry_run``, else a :class:`RunResult`.

    Raises:
        RecipeError: ``push`` without a ``push:`` section.
        HubPushError: The push failed; every local output is written and the message gives
            the ``hf-recycle push`` command that retries it.
    """
    if dry_run:
        return plan(
            recipe,
            push=push,
            trials=trials,
            storage=storage,
            endpoint=endpoint,
            token=token,
            output_dir=output_dir,
        )
    parsed, text, base_dir, display = _load(recipe, base_dir, trials)
    if engine is not None:  # --engine: the search scores with it (the recipe's options for the same engine)
        parsed = parsed.model_copy(update={"engine": parsed.engine.named(engine)})
    _check_push(parsed, push)  # before the search, not after it
    endpoint = endpoint or parsed.endpoint
    if endpoint != parsed.endpoint:
        parsed = parsed.model_copy(update={"endpoint": endpoint})
    out = Path(output_dir) if output_dir else parsed.output_dir

    from hf_recycle._search.api import check_search, search
    from hf_recycle.recipe_inputs import fetch_recipe_inputs

    # One plan for the whole run: every spec resolved once and every checkpoint downloaded once
    # here; the search opens these folders and the final merge reads them.
    n_trials, _, _ = check_search(parsed, trials)  # search settings: before any download
    fetched = fetch_recipe_inputs(parsed, endpoint=endpoint, token=token, trials=n_trials)
    results = search(
        parsed,
        trials=trials,
        storage=storage,
        output_dir=out,
        base_dir=base_dir,
        device=device,
        token=token,
        progress=progress,
        fetched=fetched,
    )
    pins = fetched.pins
    # The base the search's merges used (the recipe's when the method or a LoRA input needs one,
    # else the one the adapters name), as the search recorded it in results.json.
    base = fetched.merge_base if results.base else None
    base_pin = base.pin if base is not None else None

    entries: list[tuple[Path, Candidate, int | None]] = []
    if results.pareto:
        members = results.pareto
        order = sorted(range(len(members)), key=lambda i: members[i].trial != results.winner.trial)
        entries = [(out / PARETO_DIRNAME / f"trial-{members[i].trial}", members[i], i) for i in order]
    if results.baseline_returned or not any(entry.trial == results.winner.trial for _, entry, _ in entries):
        # the winner (the first folder, pushed to push.branch): for pareto, a baseline that no
        # front member beat (results.selection)
        entries.insert(0, (out / MODEL_DIRNAME, results.winner, None))

    names = names or PortableNames((base_dir, Path.cwd()))
    published = Published(
        recipe=names.recipe(parsed),
        text=names.recipe_text(text, parsed) if display != RECIPE_FILENAME else _dump(names.recipe(parsed)),
        command=_command(
            names.path(display),
            push=push,
            trials=trials,
            storage=names.storage(storage),
            endpoint=endpoint,
        ),
        results=SearchResults.from_json(names.results(results)),
        pins=[names.pin(p) for p in pins],
        base=names.pin(base_pin) if base_pin else None,
        names=names,
    )
    licenses = _source_licenses([*pins, *([base_pin] if base_pin else [])], endpoint, token)
    repo_id = parsed.push.repo if parsed.push else None
    template = card_template(parsed, base_dir)
    model_dirs = []
    for folder, entry, member in entries:
        finish_model_folder(
            folder,
            entry,
            member,
            results,
            parsed,
            fetched.checkpoints,
            base,
            published,
            repo_id,
            licenses,
            out,
            endpoint,
            token,
            template,
        )
        model_dirs.append(folder)
    result = RunResult(output_dir=out, results=results, model_dirs=model_dirs)
    if push:
        result.pushes = push_all(parsed, entries, published, endpoint, token)
    return result
