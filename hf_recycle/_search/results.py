"""Assemble ``results.json`` from a finished study: winner, baselines, test scores, bootstrap, plots.

The schema (format 1; every score dict is ``{"<task>": value, ..., "mean": value}``, ``mean``
being the task-weighted macro-average with lower-is-better tasks negated)::

    format, name                 1, the recipe name
    study                        {name, storage (password redacted), sampler, objective, trials_requested}
    trials                       complete trials; trials_pruned, trials_failed: the others
    examples_scored              {total, full, trials, method}: examples the trials scored on the search
                                  splits, what scoring those trials on every example would have cost,
                                  and what stopped trials early (racing | pruning | none)
    checkpoints                  the pins, in checkpoint order ({spec, repo_id, revision, commit, subfolder, kind})
    base                         the pinned base the merge uses (the recipe's, or the one LoRA inputs name), or null
    space, merge, tasks          the search space, the merge settings, [{name, weight, higher_is_better}]
    winner                       {trial, weights (one per checkpoint), [layer_weights {group: K weights}],
                                  [density], search, [validation], test (null without test splits)};
                                  a baseline returned instead of an optimized merge adds baseline (its
                                  name) and that baseline's checkpoint / members, finished
    baselines                    {uniform|best_single|greedy_soup: same form as winner; best_single adds
                                  checkpoint; greedy_soup adds members and finished}
    comparison                   {baseline (the reference of the selection: highest validation mean,
                                  else highest search mean), chosen_by: "validation mean" | "search mean",
                                  and with test splits: difference, ci_low, ci_high, confidence, n_boot,
                                  p_not_better}: winner − that baseline on the test split (no numbers
                                  when the winner is that baseline)
    comparisons                  {<baseline>: {difference, ci_low, ci_high, confidence, n_boot,
                                  p_not_better}} for every baseline but the winner itself; null without
                                  test splits
    selection                    how the winner was chosen (:mod:`hf_recycle._search.selection`):
                                  {split, rule, top, tried, baseline, test, resamples, correction
                                  (max-t | bonferroni), tests, alpha, candidates [{trial, search,
                                  [validation], difference, p_value, p_adjusted, passed}], chosen
                                  {trial, baseline}, baseline_returned, chosen_because}
    pareto                       (objective pareto) the front, each member like winner plus its own
                                  comparison (vs the chosen baseline) and comparisons (vs each baseline)
    plots                        paths of the PNGs, relative to the output folder

Every interval is a paired bootstrap (:func:`hf_recycle._search.report.paired_bootstrap`) with the
search seed, so all comparisons resample the same test examples.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from hf_recycle._score.engines import ScoringEngine
from hf_recycle._search.baselines import greedy_soup_step
from hf_recycle._search.objective import Scorer, macro_mean, score_all, write_candidate
from hf_recycle._search.outcome import RESULTS_FORMAT, SearchResults
from hf_recycle._search.racing import examples_summary, examples_text
from hf_recycle._search.report import paired_bootstrap, scores_dict, write_results
from hf_recycle._search.study import baseline_members, pruned_count, redact_url, single_scores, soup_scores

logger = logging.getLogger(__name__)


def _group_sizes(resident: Any, n_groups: int) -> np.ndarray:
    sizes = np.zeros(n_groups)
    for param, g in zip(resident._params, resident._group, strict=True):
        sizes[min(g, n_groups - 1)] += param.numel()
    return sizes


def _entry(trial: Any, groups: Sequence[str], sizes: np.ndarray) -> dict[str, Any]:
    w = np.atleast_2d(np.asarray(trial.user_attrs["weights"], dtype=np.float64))
    avg = (sizes[:, None] * w).sum(axis=0) / sizes.sum() if len(groups) > 1 else w[0]
    entry: dict[str, Any] = {"trial": trial.number, "weights": [float(x) for x in avg]}
    if len(groups) > 1:
        entry["layer_weights"] = {g: [float(x) for x in row] for g, row in zip(groups, w, strict=True)}
    if "density" in trial.user_attrs:
        entry["density"] = float(trial.user_attrs["density"])
    entry["search"] = scores_dict(trial.user_attrs["scores"], trial.user_attrs["mean"])
    return entry


def build_results(
    study: Any,
    setup: Any,
    resident: Any,
    scorers: ScoringEngine | Sequence[Scorer],
    test_scorers: ScoringEngine | Sequence[Scorer] | None,
    *,
    n_boot: int = 2000,
    validation_scorers: ScoringEngine | Sequence[Scorer] | None = None,
    lock: Any = None,
) -> SearchResults:
    """Choose the winner (:mod:`~hf_recycle._search.selection`, on the validation split when there
    is one), score it and the baselines on the test split and write results.json, results.md and plots.

    ``lock`` is the study's lock: several workers score the validation split once.
    """
    from optuna.trial import TrialState

    from hf_recycle._score.engines import as_engine
    from hf_recycle._search.screening import screened_record
    from hf_recycle._search.selection import choose_winner
    from hf_recycle._search.study import DUPLICATE_ATTR

    search_engine = as_engine(scorers)
    scorers = list(search_engine.tasks)
    validation_engine = as_engine(validation_scorers) if validation_scorers is not None else None
    test_engine = as_engine(test_scorers) if test_scorers is not None else None
    test_tasks = list(test_engine.tasks) if test_engine is not None else []

    space = setup.space
    k = space.n_checkpoints
    groups = list(space.groups)
    sizes = _group_sizes(resident, len(groups))
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and "mean" in t.user_attrs]
    if not complete:
        from hf_recycle.errors import SearchError

        raise SearchError(
            f"study '{setup.study_name}' has no complete trial: every trial failed or was pruned"
        )
    if setup.config.objective == "pareto":
        front = sorted(study.best_trials, key=lambda t: t.number)
        pool = [t for t in front if "baseline" not in t.user_attrs]
    else:
        front = []
        pool = [t for t in complete if "baseline" not in t.user_attrs]
    tried = sum(
        "baseline" not in t.user_attrs
        and (
            t.state == TrialState.COMPLETE
            or (t.state == TrialState.PRUNED and DUPLICATE_ATTR not in t.user_attrs)
        )
        for t in trials
    )

    baseline_trials: dict[str, Any] = {}
    extra: dict[str, dict[str, Any]] = {}
    for t in complete:
        if t.user_attrs.get("baseline") == "uniform":
            baseline_trials.setdefault("uniform", t)
    singles = single_scores(complete, k)
    single_trials = {}
    for t in complete:
        if t.user_attrs.get("baseline") == "single":
            single_trials.setdefault(int(t.user_attrs["checkpoint"]), t)
    if singles is not None:
        best = int(np.argmax(singles))
        baseline_trials["best_single"] = single_trials[best]
        extra["best_single"] = {"checkpoint": best}
        if "greedy_soup" in setup.config.baselines:
            state = greedy_soup_step(singles, soup_scores(complete, k))
            if not state.done:
                logger.warning(
                    "greedy soup did not finish within the trial budget: reporting its current soup"
                )
            for t in complete:
                if baseline_members(t, k) == state.members:
                    baseline_trials["greedy_soup"] = t
                    break
            extra["greedy_soup"] = {"members": sorted(state.members), "finished": state.done}
    wanted = [b for b in ("uniform", "best_single", "greedy_soup") if b in setup.config.baselines]
    reported = {name: baseline_trials[name] for name in wanted if name in baseline_trials}
    selection, validation = choose_winner(
        study, setup, resident, search_engine, validation_engine, pool, reported, tried=tried, lock=lock
    )
    trial_by_number = {t.number: t for t in complete}
    winner_trial = trial_by_number[selection.winner.trial]
    winner_entry = _entry(winner_trial, groups, sizes)
    if selection.winner.baseline is not None:
        winner_entry.update(baseline=selection.winner.baseline, **extra.get(selection.winner.baseline, {}))

    results: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "name": setup.recipe.name,
        "study": {
            "name": setup.study_name,
            "storage": redact_url(setup.storage_url),
            "sampler": setup.recipe.search.sampler,
            "objective": setup.config.objective,
            "trials_requested": setup.trials,
        },
        "trials": len(complete),
        "trials_pruned": pruned_count(trials),
        "trials_failed": sum(t.state == TrialState.FAIL for t in trials),
        "examples_scored": examples_summary(
            trials, sum(int(s.num_examples) for s in scorers), _early_stop(setup.recipe.search)
        ),
        "screened": screened_record(complete, setup.pins, setup.recipe.search.screen),
        "checkpoints": [{"spec": pin.spec, **pin.to_json()} for pin in setup.pins],
        "base": {"spec": setup.base_pin.spec, **setup.base_pin.to_json()}
        if setup.base_pin is not None
        else None,
        "space": {**space.describe(), "granularity": setup.recipe.search.granularity},
        "merge": dict(setup.config.method),
        "tasks": [
            {"name": s.name, "weight": s.weight, "higher_is_better": s.higher_is_better} for s in scorers
        ],
        "winner": winner_entry,
        "baselines": {},
    }
    for name, trial in reported.items():
        results["baselines"][name] = {**_entry(trial, groups, sizes), **extra.get(name, {})}
    if front:
        results["pareto"] = [_entry(t, groups, sizes) for t in front]
    if validation:
        for entry in [results["winner"], *results["baselines"].values(), *results.get("pareto", [])]:
            if entry["trial"] in validation:
                entry["validation"] = validation[entry["trial"]]

    # --- test split -----------------------------------------------------------------
    per_example: dict[int, dict[str, np.ndarray]] = {}
    test_cache: dict[int, dict[str, float]] = {}

    def test_of(entry: dict[str, Any], trial: Any) -> dict[str, float] | None:
        if test_engine is None:
            return None
        if trial.number not in test_cache:
            w = np.asarray(trial.user_attrs["weights"], dtype=np.float64)
            write_candidate(resident, test_engine, w, trial.user_attrs.get("density"))
            res = score_all(resident, test_engine)
            values = {n: float(r.value) for n, r in res.items()}
            test_cache[trial.number] = scores_dict(values, macro_mean(values, test_tasks))
            per_example[trial.number] = {
                n: np.asarray(r.per_example, dtype=np.float64) for n, r in res.items()
            }
        return test_cache[trial.number]

    results["winner"]["test"] = test_of(results["winner"], winner_trial)
    for name, entry in results["baselines"].items():
        entry["test"] = test_of(entry, baseline_trials[name])
    for entry in results.get("pareto", []):
        entry["test"] = test_of(entry, trial_by_number[entry["trial"]])

    if results["baselines"]:
        assert selection.reference is not None and selection.reference.baseline is not None
        best_name = selection.reference.baseline
        chosen_by = "validation mean" if validation_engine is not None else "search mean"
        results["comparison"] = {"baseline": best_name, "chosen_by": chosen_by}
        results["comparisons"] = None
        if test_engine is not None:
            weights = {s.name: s.weight for s in test_tasks}
            hib = {s.name: s.higher_is_better for s in test_tasks}

            @functools.cache  # the Pareto winner is also a front member: bootstrap it once
            def versus_each(trial_number: int) -> dict[str, dict[str, Any]]:
                return {
                    name: paired_bootstrap(
                        per_example[trial_number],
                        per_example[baseline_trials[name].number],
                        weights,
                        hib,
                        n_boot=n_boot,
                        seed=setup.recipe.search.seed,
                    )
                    for name in results["baselines"]
                }

            results["comparisons"] = {  # a baseline returned as the winner is not compared with itself
                name: comp
                for name, comp in versus_each(winner_trial.number).items()
                if not (selection.baseline_returned and baseline_trials[name].number == winner_trial.number)
            }
            results["comparison"].update(results["comparisons"].get(best_name, {}))
            for entry in results.get("pareto", []):
                entry["comparisons"] = versus_each(entry["trial"])
                entry["comparison"] = dict(entry["comparisons"][best_name])

    results["selection"] = selection.record
    logger.info("%s", examples_text(results["examples_scored"]))
    results["plots"] = _plots(setup, results, complete, single_trials)
    write_results(setup.output_dir, results)
    logger.info("wrote %s", setup.output_dir / "results.json")
    return SearchResults.from_json(results)


def _early_stop(spec: Any) -> str:
    """What stops a trial of ``spec`` (the recipe's ``search:``) early: racing, pruning or none."""
    return "racing" if spec.racing_spec is not None else "pruning" if spec.pruning else "none"


def _plots(
    setup: Any, results: dict[str, Any], complete: list[Any], single_trials: dict[int, Any]
) -> list[str]:
    from hf_recycle._search import plots

    folder = setup.output_dir / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    out: list[str] = []
    try:
        history = [
            {"number": t.number, "mean": t.user_attrs["mean"], "baseline": t.user_attrs.get("baseline")}
            for t in sorted(complete, key=lambda t: t.number)
        ]
        plots.plot_history(history, folder / "history.png")
        out.append("plots/history.png")
        labels = [f"{i}: {p.display}"[:40] for i, p in enumerate(setup.pins)]
        plots.plot_weights(
            labels,
            results["winner"]["weights"],
            results["winner"].get("layer_weights"),
            folder / "weights.png",
        )
        out.append("plots/weights.png")
        tasks = [t["name"] for t in results["tasks"]]
        if len(tasks) == 2:
            trial_points = [{"scores": t.user_attrs["scores"]} for t in complete]
            singles = [{"scores": t.user_attrs["scores"]} for _, t in sorted(single_trials.items())]
            winners = results.get("pareto") or [results["winner"]]
            plots.plot_pareto(
                tasks, trial_points, singles, results["baselines"], winners, folder / "pareto.png"
            )
            out.append("plots/pareto.png")
    except Exception as exc:  # plots are a convenience: never lose results over them
        logger.warning("could not draw plots: %s", exc)
    return out
