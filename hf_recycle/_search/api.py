"""``hf_recycle.search``: optimize the weights of a merge of many checkpoints (Khalifa et al. 2024).

:func:`search` resolves the recipe's checkpoints, keeps them resident, runs (or
resumes) an Optuna study whose trials write candidate merges into one live model
and score them on the tasks' search splits, then chooses the model to return
(:mod:`~hf_recycle._search.selection`: on the validation splits when the tasks have them),
scores it and the baselines on the test splits and writes ``results.json``, ``results.md``, plots and
``checkpoints.lock.json`` into the output folder. :func:`create_study` makes the study
in a shared storage before several workers start.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hf_recycle._search.objective import Scorer, TrialObjective, macro_mean, score_all, write_candidate
from hf_recycle._search.outcome import SearchResults
from hf_recycle._search.samplers import make_sampler
from hf_recycle._search.screening import screen_ratio
from hf_recycle._search.space import SearchSpace, group_tensors
from hf_recycle._search.study import (
    StudyConfig,
    create_or_load_study,
    default_storage_url,
    enqueue_initial_baselines,
    finished_count,
    open_storage,
    redact_url,
)
from hf_recycle._search.worker import StudyLock, run_worker
from hf_recycle.errors import SearchError
from hf_recycle.recipe_inputs import RecipeInputs

logger = logging.getLogger(__name__)

__all__ = ["search", "create_study", "check_search", "SearchSetup", "SearchResults"]


@dataclass
class SearchSetup:
    """A recipe resolved into what a search worker needs (sources opened, nothing scored).

    Attributes:
        recipe: The recipe.
        base_dir: Folder that relative task paths resolve against.
        pins: The pinned checkpoints, in order.
        base_pin: The pinned base, when the merge uses one (task-vector methods, LoRA inputs).
        inputs: The opened checkpoint (and base) sources.
        space: The search space.
        config: The study configuration (stored in the study and checked on resume).
        storage_url: The Optuna storage URL.
        study_name: The study name.
        output_dir: Where results go.
        trials: Finished trials the study should hold.
        normalize: Normalization of the candidate merges.
    """

    recipe: Any
    base_dir: Path
    pins: list[Any]
    base_pin: Any
    inputs: Any
    space: SearchSpace
    config: StudyConfig
    storage_url: str
    study_name: str
    output_dir: Path
    trials: int
    normalize: bool

    def close(self) -> None:
        """Close the checkpoint sources."""
        self.inputs.close()


def _load_recipe(
    recipe: Any, base_dir: str | Path | None, trials: int | None, tasks: bool
) -> tuple[Any, Path]:
    from hf_recycle.preflight import check_recipe, load_recipe

    if isinstance(recipe, str | Path):  # every problem of the file at once, before anything is downloaded
        base = Path(base_dir) if base_dir else Path(recipe).resolve().parent
        return load_recipe(recipe, base_dir=base, trials=trials, tasks=tasks), base
    base = Path(base_dir) if base_dir else Path.cwd()
    if tasks:
        check_recipe(recipe, base_dir=base)
    return recipe, base


def _task_info(recipe: Any, scorers: Any) -> tuple[list[str], list[bool]]:
    if scorers is not None:
        from hf_recycle._score.engines import as_engine

        tasks = as_engine(scorers).tasks
        return [s.name for s in tasks], [bool(s.higher_is_better) for s in tasks]
    return [t.name for t in recipe.tasks], [bool(t.larger_is_better) for t in recipe.tasks]


def check_search(
    recipe: Any, trials: int | None = None, scorers: Sequence[Scorer] | None = None
) -> tuple[int, list[str], list[bool]]:
    """``(trials, task names, higher is better per task)`` of a search of ``recipe``, checked before any download.

    Raises:
        SearchError: trials <= 0, no task, ``pareto`` with one task, pruning with ``pareto``.
    """
    spec = recipe.search
    n_trials = spec.trials if trials is None else int(trials)
    if n_trials <= 0:
        raise SearchError(f"trials must be a positive number, got {n_trials}: pass --trials N with N >= 1")
    tasks, directions = _task_info(recipe, scorers)
    if not tasks:
        raise SearchError(
            f"recipe '{recipe.name}' has no tasks: a search needs at least one task to score candidates"
        )
    if spec.objective == "pareto" and len(tasks) < 2:
        raise SearchError(
            "objective 'pareto' needs at least 2 tasks (one objective per task): add a task or use objective 'mean'"
        )
    if spec.pruning and spec.objective == "pareto":
        raise SearchError(
            "pruning works with objective 'mean' only (Optuna cannot prune multi-objective trials)"
        )
    return n_trials, tasks, directions


def prepare(
    recipe: Any,
    *,
    trials: int | None = None,
    storage: str | None = None,
    study: str | None = None,
    output_dir: str | Path | None = None,
    base_dir: str | Path | None = None,
    scorers: Sequence[Scorer] | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    fetched: RecipeInputs | None = None,
) -> SearchSetup:
    """Validate the search settings, fetch and open the checkpoints, and define the space.

    Hub specs resolve against ``endpoint``, else the recipe's ``endpoint``, else
    huggingface_hub's default (``HF_ENDPOINT``), with ``token`` (default: huggingface_hub's
    own lookup). With ``fetched`` (the recipe's checkpoints already resolved and downloaded,
    :func:`~hf_recycle.recipe_inputs.fetch_recipe_inputs`) nothing is resolved or downloaded.

    Raises:
        SearchError: Fewer than 2 checkpoints, trials <= 0 or fewer than the baselines
            need, ``pareto`` with one task, no task at all.
        IncompatibleCheckpointsError: Checkpoints of different architectures.
    """
    from hf_recycle._merge.engine import align_tied_heads
    from hf_recycle._merge.inputs import open_inputs
    from hf_recycle._merge.methods import get_method
    from hf_recycle._search.live import _check_compatible, default_normalize
    from hf_recycle.recipe_inputs import fetch_recipe_inputs

    recipe, base_dir = _load_recipe(recipe, base_dir, trials, tasks=scorers is None)
    if endpoint and endpoint != recipe.endpoint:
        recipe = recipe.model_copy(update={"endpoint": endpoint})
    spec = recipe.search
    n_trials, tasks, directions = check_search(recipe, trials, scorers)
    if fetched is None:
        fetched = fetch_recipe_inputs(recipe, endpoint=recipe.endpoint, token=token, trials=n_trials)
    pins = fetched.pins
    method = get_method(recipe.merge.method)
    # The base as the final merge (hf_recycle.pipeline) uses it: task-vector methods mix it in,
    # and LoRA adapters are read over it (whatever the method; fetch_recipe_inputs decides).
    inputs = open_inputs(list(fetched.checkpoints), fetched.base, named_bases=fetched.named_bases)
    base_pin = fetched.base.pin if fetched.base is not None else inputs.base_pin
    try:
        inputs.checkpoints, _ = align_tied_heads(inputs.checkpoints)
        keys = _check_compatible(inputs.checkpoints, inputs.base)
        groups, _ = group_tensors(keys, spec.layers_per_group)
        space = SearchSpace(
            n_checkpoints=len(pins),
            groups=tuple(groups),
            parameterization=spec.weights,
            search_density=bool(spec.search_density and method.uses_density),
            default_density=recipe.merge.density,
        )
        normalize = (
            default_normalize(method.name, spec.weights)
            if recipe.merge.normalize is None
            else bool(recipe.merge.normalize)
        )
        config = StudyConfig(
            space=space,
            checkpoints=[pin.pinned_spec() for pin in pins],
            tasks=tasks,
            directions=directions,
            objective=spec.objective,
            method={
                "method": method.name,
                "lambda": recipe.merge.lambda_,
                "normalize": normalize,
                "density": recipe.merge.density,
                "seed": recipe.merge.seed,
            },
            baselines=tuple(dict.fromkeys(spec.baselines)),
        )
    except BaseException:
        inputs.close()
        raise
    out = Path(output_dir) if output_dir else recipe.output_dir
    return SearchSetup(
        recipe=recipe,
        base_dir=base_dir,
        pins=pins,
        base_pin=base_pin,
        inputs=inputs,
        space=space,
        config=config,
        storage_url=storage or spec.storage or default_storage_url(out),
        study_name=study or spec.study or recipe.name,
        output_dir=out,
        trials=n_trials,
        normalize=normalize,
    )


def create_study(
    recipe: Any,
    *,
    storage: str | None = None,
    study: str | None = None,
    output_dir: str | Path | None = None,
    base_dir: str | Path | None = None,
    scorers: Sequence[Scorer] | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
) -> str:
    """Create the recipe's study in its storage and enqueue its baselines (once, before several
    workers start); return its name."""
    setup = prepare(
        recipe,
        storage=storage,
        study=study,
        output_dir=output_dir,
        base_dir=base_dir,
        scorers=scorers,
        endpoint=endpoint,
        token=token,
    )
    try:
        with StudyLock.for_storage(setup.storage_url, setup.study_name).held():
            created = create_or_load_study(
                open_storage(setup.storage_url, None), setup.study_name, setup.config
            )
            enqueue_initial_baselines(created, setup.config)
        return setup.study_name
    finally:
        setup.close()


def search(
    recipe: Any,
    *,
    trials: int | None = None,
    storage: str | None = None,
    study: str | None = None,
    output_dir: str | Path | None = None,
    base_dir: str | Path | None = None,
    device: str | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    progress: bool = False,
    scorers: Sequence[Scorer] | None = None,
    test_scorers: Sequence[Scorer] | None = None,
    validation_scorers: Sequence[Scorer] | None = None,
    heartbeat_interval: int | None = 30,
    n_boot: int = 2000,
    fetched: RecipeInputs | None = None,
    engine: str | None = None,
) -> SearchResults:
    """Search the merge weights of a recipe's checkpoints; resume the study when it exists.

    Args:
        recipe: A :class:`~hf_recycle.recipe.Recipe` or the path of a recipe file.
        trials: Finished trials the study should hold, baselines included (default: ``search.trials``).
        storage: Optuna storage URL (default: ``search.storage``, else ``<output>/study.db``).
        study: Study name (default: ``search.study``, else the recipe's name).
        output_dir: Where results go (default: the recipe's output dir).
        base_dir: Folder that task data paths resolve against (default: the recipe file's folder).
        device: Where the live model runs (default: ``merge.device``).
        endpoint: Hub endpoint for Hub specs (default: the recipe's ``endpoint``, else ``HF_ENDPOINT``).
        token: Hub token for Hub specs (default: huggingface_hub's own lookup); never written.
        progress: Show a progress bar with the best score so far.
        scorers: A scoring engine (:class:`~hf_recycle._score.engines.ScoringEngine`) or search-split
            scorers to use instead of the recipe's engine built from ``recipe.tasks``.
        test_scorers: The same for the test split, with ``scorers`` (``None``: no test scores).
        validation_scorers: The same for the validation split, with ``scorers`` (``None``: the
            winner is chosen on the search split).
        heartbeat_interval: Seconds between heartbeats of running trials (RDB storages).
        n_boot: Resamples of the paired bootstrap.
        fetched: The recipe's checkpoints already resolved and downloaded
            (:func:`~hf_recycle.recipe_inputs.fetch_recipe_inputs`; ``hf-recycle run`` passes
            them): nothing is resolved or downloaded again.
        engine: The scoring engine (``hf`` or ``vllm``) instead of the recipe's ``engine:`` name.

    Returns:
        The :class:`~hf_recycle._search.outcome.SearchResults`, also written to ``results.json``
        (``checkpoints.lock.json`` with the pins is written next to it).
    """
    import optuna

    setup = prepare(
        recipe,
        trials=trials,
        storage=storage,
        study=study,
        output_dir=output_dir,
        base_dir=base_dir,
        scorers=scorers,
        endpoint=endpoint,
        token=token,
        fetched=fetched,
    )
    recipe = setup.recipe
    spec = recipe.search
    built: tuple[Any, ...] = ()  # the engines built here, closed at the end
    try:
        from hf_recycle._search.live import pick_device
        from hf_recycle._search.memory import plan_recipe_memory
        from hf_recycle._search.resident import ResidentModel
        from hf_recycle._search.streamed import StreamedModel

        live_device = pick_device(device or recipe.merge.device)
        memory = plan_recipe_memory(  # from the headers, before anything is loaded
            recipe, setup.inputs.checkpoints, setup.inputs.base, live_device
        )
        logger.info("%s", memory.describe())
        if scorers is None:  # tasks first: bad data or a missing tokenizer fail before the model loads
            scorers, test_scorers, validation_scorers = built = _build_scorers(recipe, setup, engine)

        _, group_of = group_tensors(list(_all_keys(setup.inputs.checkpoints)), spec.layers_per_group)
        model_args: dict[str, Any] = dict(
            base=setup.inputs.base,
            method=recipe.merge.method,
            lambda_=recipe.merge.lambda_,
            normalize=setup.normalize,
            seed=recipe.merge.seed,
            dtype=recipe.merge.dtype,
            device=live_device,
            group_of=group_of,
        )
        if memory.tier == "disk":
            resident: Any = StreamedModel(
                setup.inputs.checkpoints,
                keep_factors=memory.keep_factors,
                compiled_sum=memory.compiled_sum,
                **model_args,
            )
        else:
            resident = ResidentModel(
                setup.inputs.checkpoints,
                resident_device=memory.resident_device,
                compiled_sum=memory.compiled_sum,
                **model_args,
            )
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        lock = StudyLock.for_storage(setup.storage_url, setup.study_name)
        with lock.held():  # workers that start together on a new database create its tables once
            storage_obj = open_storage(setup.storage_url, heartbeat_interval)
            created = create_or_load_study(storage_obj, setup.study_name, setup.config)
        n_existing = len(created.get_trials(deepcopy=False))
        sampler = make_sampler(
            spec.sampler,
            setup.space,
            seed=spec.seed + n_existing,
            n_objectives=len(setup.config.optuna_directions),
            trials=setup.trials,
        )
        pruner = (
            optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
            if spec.pruning
            else optuna.pruners.NopPruner()
        )
        study_obj = optuna.load_study(
            study_name=setup.study_name, storage=storage_obj, sampler=sampler, pruner=pruner
        )
        objective = TrialObjective(
            setup.space,
            resident,
            scorers,
            spec.objective,
            spec.pruning_fraction if spec.pruning else None,
            racing=spec.racing_spec,
            screen=screen_ratio(spec),
        )
        _run_with_progress(study_obj, setup, objective, lock, progress)
        from hf_recycle._search.results import build_results
        from hf_recycle.hub.lock import write_lock

        results = build_results(
            study_obj,
            setup,
            resident,
            scorers,
            test_scorers,
            n_boot=n_boot,
            validation_scorers=validation_scorers,
            lock=lock,
        )
        write_lock(setup.pins, setup.output_dir, base=setup.base_pin)
        return results
    except Exception as exc:  # a full disk (results, study, lock): one paragraph, not a traceback
        from hf_recycle.outputs import raise_if_disk_full

        kept, advice = "the study keeps every finished trial", "free some space and run again"
        raise_if_disk_full(exc, "the search's outputs", setup.output_dir, outcome=kept, advice=advice)
        raise
    finally:
        for built_engine in built:
            if built_engine is not None:
                built_engine.close()
        setup.close()


def _all_keys(sources: Sequence[Any]) -> list[str]:
    return list(sources[0].keys())


def _build_scorers(recipe: Any, setup: SearchSetup, engine_name: str | None = None) -> tuple[Any, Any, Any]:
    """The search, test and validation engines of the recipe's tasks (``None`` for a split they lack)."""
    from hf_recycle._merge.lora import LoraSource
    from hf_recycle._score.api import load_tokenizer
    from hf_recycle._score.engines import get_engine
    from hf_recycle.errors import CheckpointFormatError
    from hf_recycle.hub.files import TOKENIZER_FILES

    # The tokenizer the merged model gets (hf_recycle._merge.engine copies it from the base when
    # the merge uses one, else from the first checkpoint); an adapter folder usually has none,
    # so then the one of the base it is read over.
    first = setup.inputs.checkpoints[0]
    candidates = [Path(setup.inputs.base.path)] if setup.inputs.base is not None else []
    candidates.append(Path(first.path))
    if isinstance(first, LoraSource):
        candidates.append(Path(first.base.path))
    candidates = list(dict.fromkeys(candidates))
    folder = next((c for c in candidates if any((c / n).is_file() for n in TOKENIZER_FILES)), None)
    todo = "save the tokenizer with the base or the first checkpoint, or add 'base: <spec>' to the recipe"
    if folder is None:
        raise SearchError(
            "no tokenizer to score candidates with: "
            + ", ".join(f"'{c}'" for c in candidates)
            + f" (the base the merge uses, then the first checkpoint and its base) hold no tokenizer files; {todo}"
        )
    try:
        tokenizer = load_tokenizer(folder)
    except CheckpointFormatError as exc:
        raise SearchError(
            f"the tokenizer of '{folder}' does not load ({exc.__cause__ or exc}); {todo}"
        ) from exc
    chosen = recipe.engine.named(engine_name)
    engine = get_engine(chosen.name)
    # An engine with its own model (vllm) is built from a folder with the pool's config.json;
    # the first candidate's weights replace the folder's before anything is scored.
    config_dir = next((c for c in candidates if (c / "config.json").is_file()), None)
    where = dict(model_dir=config_dir, tokenizer_dir=folder, load_weights=False, **chosen.options)
    search_engine = engine.build(tokenizer, recipe.tasks, "search", setup.base_dir, **where)
    built = [search_engine]
    try:  # the recipe gives every task a validation_split or none
        if all(t.validation_split is not None for t in recipe.tasks):
            built.append(engine.build(tokenizer, recipe.tasks, "validation", setup.base_dir, **where))
        else:
            built.append(None)
        missing = [t.name for t in recipe.tasks if t.test_split is None]
        if missing:
            logger.warning(
                "task(s) %s have no test_split: the final report has no test scores", ", ".join(missing)
            )
            return search_engine, None, built[1]
        return search_engine, engine.build(tokenizer, recipe.tasks, "test", setup.base_dir, **where), built[1]
    except BaseException:
        for item in built:
            if item is not None:
                item.close()
        raise


def _run_with_progress(
    study: Any, setup: SearchSetup, objective: TrialObjective, lock: StudyLock, progress: bool
) -> None:
    from tqdm.auto import tqdm

    start = finished_count(study.get_trials(deepcopy=False))
    bar = tqdm(
        total=setup.trials,
        initial=min(start, setup.trials),
        desc="search",
        unit="trial",
        disable=not progress,
    )

    def on_trial(study_: Any, trial: Any) -> None:
        trials_ = study_.get_trials(deepcopy=False)
        bar.n = min(finished_count(trials_), setup.trials)
        means = [
            t.user_attrs["mean"] for t in trials_ if "mean" in t.user_attrs and t.state.name == "COMPLETE"
        ]
        if means:
            bar.set_postfix(best=f"{max(means):.4g}")
        bar.refresh()

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            run_worker(study, setup.config, objective, setup.trials, lock=lock, on_trial=on_trial)
    finally:
        bar.close()


def evaluate_weights(
    resident: Any, scorers: Sequence[Scorer], weights: np.ndarray, density: float | None
) -> dict:
    """Write ``weights`` into the resident model and score it: task name -> result."""
    write_candidate(resident, scorers, np.asarray(weights), density)
    return score_all(resident, scorers)


__all__ += ["prepare", "evaluate_weights", "macro_mean", "redact_url"]
