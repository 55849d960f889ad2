"""Which model a search returns, chosen so that its held-out score is not a lottery.

The trial of best search score is the maximum of many noisy estimates: its search score is
biased upward (the winner's curse), and on held-out data it may be no better than the
uniform soup. So the search does not simply return it:

- **With a validation split** (every task has ``validation_split``, which the optimizer never
  sees): the ``search.select.top`` optimized trials of best search mean (``M``) and the
  baselines are scored on it. The reference is the baseline of best validation mean. An
  optimized trial *beats* it when a one-sided paired sign-flip test on the validation
  examples gives ``p <= alpha / M`` (Bonferroni over the ``M`` candidates, which were chosen
  without looking at the validation split). The winner is the candidate of best validation
  mean among those that beat the reference; when none does, it is the reference baseline.
- **Without one**: the reference is the baseline of best search mean, and the ``M`` best
  optimized trials are tested against it on the search examples with ``p <= alpha / N``, ``N``
  being every optimized trial the study ran (complete or pruned): each was a candidate the
  search looked at. The optimizer chose its trials by looking at these same examples, so
  this correction is an approximation: a validation split is the clean way.

The test (:func:`sign_flip_test`): under the null hypothesis that the candidate is no better
than the baseline, each example's difference is as likely to have either sign; the p-value is
the share of sign patterns whose statistic (the difference of the task-weighted
macro-average of per-example scores, lower-is-better tasks negated, the statistic of
:func:`~hf_recycle._search.report.paired_bootstrap`) is at least the observed one. It needs no
distributional assumption and stays valid for a handful of examples (with 4 examples no
p-value is below 1/16, so 4 examples never beat a baseline).

Validation scores are stored in the study (user attributes keyed by the tasks and the trial),
written under the study's lock: with several workers, the first one to finish scores the
candidates and the others read its numbers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hf_recycle._search.objective import PER_EXAMPLE_ATTR, macro_mean, score_all, write_candidate

logger = logging.getLogger(__name__)

__all__ = [
    "BASELINE_LABELS",
    "Contender",
    "Selection",
    "baseline_label",
    "choose_winner",
    "decide",
    "sign_flip_test",
]

#: How reports and the model card name the baselines.
BASELINE_LABELS = {
    "uniform": "uniform soup",
    "best_single": "best single checkpoint",
    "greedy_soup": "greedy soup",
}
#: Study user attribute prefix of the validation scores (``<prefix>:<tasks key>:<trial>``).
VALIDATION_ATTR = "hf_recycle_validation"
#: Up to this many non-zero differences, every sign pattern is enumerated (an exact p-value).
EXACT_MAX = 16
#: The fewest random sign patterns of the Monte Carlo p-value.
MIN_RESAMPLES = 10_000
TEST_NAME = "one-sided paired sign-flip test of the task-weighted macro-average of per-example scores"
CORRECTION = "bonferroni"


def baseline_label(name: str, checkpoint: int | None = None) -> str:
    """``uniform`` -> ``uniform soup``; ``best_single`` with its checkpoint -> ``best single checkpoint (#2)``."""
    label = BASELINE_LABELS.get(name, name)
    return f"{label} (#{checkpoint})" if name == "best_single" and checkpoint is not None else label


def sign_flip_test(
    a: Mapping[str, Sequence[float]],
    b: Mapping[str, Sequence[float]],
    weights: Mapping[str, float],
    higher_is_better: Mapping[str, bool],
    *,
    resamples: int = MIN_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """One-sided paired sign-flip test that model A beats model B.

    Args:
        a: Per task, per-example scores of model A (the same examples, in the same order, as ``b``).
        b: Per task, per-example scores of model B.
        weights: Task weights.
        higher_is_better: Task directions.
        resamples: Random sign patterns when there are more than :data:`EXACT_MAX` non-zero
            differences.
        seed: Seed of the random patterns.

    Returns:
        ``{"difference", "p_value", "exact"}``: the macro-average of A minus that of B, and the
        share of sign patterns whose statistic is at least ``difference``: over every pattern
        when ``exact``, else ``(1 + hits) / (1 + resamples)`` (a valid Monte Carlo p-value).

    Raises:
        ValueError: The two models were scored on different examples.
    """
    total = math.fsum(weights[t] for t in a)
    parts = []
    for t in a:
        x, y = np.asarray(a[t], dtype=np.float64), np.asarray(b[t], dtype=np.float64)
        if x.shape != y.shape or x.size == 0:
            raise ValueError(f"task '{t}': paired scores need the same non-empty examples for both models")
        sign = 1.0 if higher_is_better[t] else -1.0
        parts.append((x - y) * (sign * weights[t] / total / x.size))
    v = np.concatenate(parts)  # the statistic of a sign pattern s is s @ v
    difference = float(np.sum(v))
    v = v[v != 0]  # flipping a zero changes nothing
    n = v.size
    if n == 0:
        return {"difference": difference, "p_value": 1.0, "exact": True}
    tol = 1e-9 * float(np.abs(v).sum())  # the observed pattern counts despite rounding
    if n <= EXACT_MAX:
        bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
        stats = (2 * bits - 1) @ v
        return {"difference": difference, "p_value": float(np.mean(stats >= difference - tol)), "exact": True}
    rng = np.random.default_rng(seed)
    hits, left, rows, total = 0, int(resamples), max(1, (1 << 22) // n), float(v.sum())
    while left > 0:
        r = min(rows, left)
        # random bits b (8 per random byte), the signs are 2b - 1: the statistic is 2 b @ v - Σv
        bits = np.unpackbits(rng.integers(0, 256, (r, (n + 7) // 8), dtype=np.uint8), axis=1, count=n)
        hits += int(np.count_nonzero(2.0 * (bits.astype(np.float64) @ v) - total >= difference - tol))
        left -= r
    return {"difference": difference, "p_value": (1 + hits) / (1 + int(resamples)), "exact": False}


@dataclass(frozen=True)
class Contender:
    """A trial the selection compares.

    Attributes:
        trial: Its trial number.
        search_mean: Its search mean (what the optimizer maximized).
        mean: Its mean on the split the choice is made on (validation, else search).
        per_example: Per task, its per-example scores on that split.
        baseline: ``uniform`` / ``best_single`` / ``greedy_soup``, or ``None`` for an optimized trial.
        label: How messages name a baseline (``best single checkpoint (#2)``).
    """

    trial: int
    search_mean: float
    mean: float
    per_example: Mapping[str, Any]
    baseline: str | None = None
    label: str | None = None


@dataclass(frozen=True)
class Selection:
    """The choice: the winner, the baseline it was held against, and the record for results.json."""

    winner: Contender
    reference: Contender | None
    record: dict[str, Any]

    @property
    def baseline_returned(self) -> bool:
        """Whether the returned model is a baseline rather than an optimized merge."""
        return self.winner.baseline is not None


def decide(
    candidates: Sequence[Contender],
    baselines: Sequence[Contender],
    *,
    split: str,
    tried: int,
    alpha: float,
    weights: Mapping[str, float],
    higher_is_better: Mapping[str, bool],
    top: int,
    seed: int = 0,
) -> Selection:
    """Choose between the optimized ``candidates`` and the ``baselines`` (the rule of the module docstring).

    Args:
        candidates: The optimized trials considered (the ``top`` of best search mean).
        baselines: The baselines, scored on the same split.
        split: ``validation`` or ``search``: where ``mean`` and ``per_example`` come from.
        tried: Optimized trials the study ran (complete or pruned): the Bonferroni factor
            without a validation split.
        alpha: Family-wise error rate of the tests.
        weights: Task weights.
        higher_is_better: Task directions.
        top: The ``search.select.top`` setting (recorded).
        seed: Seed of the tests' random sign patterns.

    Raises:
        ValueError: Neither a candidate nor a baseline, or ``split`` is neither name.
    """
    if split not in ("validation", "search"):
        raise ValueError(f"split must be 'validation' or 'search', got {split!r}")
    if not candidates and not baselines:
        raise ValueError("nothing to choose from: no optimized trial and no baseline")

    def best_first(c: Contender) -> tuple[float, float, int]:
        return (-c.mean, -c.search_mean, c.trial)

    where = "on validation" if split == "validation" else "on the search split"
    reference = min(baselines, key=best_first) if baselines else None
    tests = len(candidates) if split == "validation" else max(tried, len(candidates))
    tests = max(tests, 1)
    threshold = alpha / tests
    resamples = max(MIN_RESAMPLES, math.ceil(20 * tests / alpha))  # the threshold is well resolved
    rows: list[dict[str, Any]] = []
    passed: list[Contender] = []
    for c in candidates:
        row: dict[str, Any] = {"trial": c.trial, "search": c.search_mean}
        if split == "validation":
            row["validation"] = c.mean
        if reference is not None:
            test = sign_flip_test(
                c.per_example,
                reference.per_example,
                weights,
                higher_is_better,
                resamples=resamples,
                seed=seed,
            )
            row.update(
                difference=test["difference"], p_value=test["p_value"], passed=test["p_value"] <= threshold
            )
            if row["passed"]:
                passed.append(c)
        rows.append(row)

    k = len(candidates)
    if split == "validation":
        rule = (
            f"the {k} optimized trial(s) of best search mean and the baselines were scored on each task's "
            f"validation_split; an optimized trial is returned only when it beats the best baseline there "
            f"(one-sided paired sign-flip test, p <= alpha/{tests}: Bonferroni over the {tests} candidates), "
            "else that baseline"
        )
    else:
        rule = (
            f"no validation split: the {k} optimized trial(s) of best search mean were tested against the "
            f"best baseline on the search split (one-sided paired sign-flip test, p <= alpha/{tests}: "
            f"Bonferroni over the {tests} optimized trials tried); an optimized trial is returned only when "
            "it passes, else that baseline"
        )
    if reference is None:
        winner = min(candidates, key=best_first)
        because = (
            f"no baseline ran: trial {winner.trial} is the optimized trial of best mean {where}, untested"
        )
    elif passed:
        winner = min(passed, key=best_first)
        row = next(r for r in rows if r["trial"] == winner.trial)
        because = (
            f"trial {winner.trial} beat the {reference.label} {where} by {row['difference']:+.4g} "
            f"(p = {row['p_value']:.2g} <= {alpha:g}/{tests})"
            + (
                f"; of the {len(passed)} trials that did, it has the best mean {where}"
                if len(passed) > 1
                else ""
            )
        )
    else:
        winner = reference
        if not candidates:
            because = f"no optimized trial completed; this is the {reference.label}"
        elif split == "validation":
            because = f"optimized merges did not beat the {reference.label} on validation; this is the {reference.label}"
        else:
            because = (
                f"optimized merges did not beat the {reference.label} on the search split by more than the "
                f"selection noise ({tests} optimized trials tried, no validation split); this is the "
                f"{reference.label}"
            )
    record = {
        "split": split,
        "rule": rule,
        "top": int(top),
        "tried": int(tried),
        "baseline": reference.baseline if reference is not None else None,
        "test": TEST_NAME,
        "resamples": resamples,
        "correction": CORRECTION,
        "tests": tests,
        "alpha": float(alpha),
        "threshold": threshold,
        "candidates": rows,
        "chosen": {"trial": winner.trial, "baseline": winner.baseline},
        "baseline_returned": winner.baseline is not None,
        "chosen_because": because,
    }
    return Selection(winner, reference, record)


# --- scores of the contenders --------------------------------------------------------------


def tasks_key(engine_tasks: Sequence[Any], recipe_tasks: Sequence[Any]) -> str:
    """A short digest of the tasks as scored (names, sizes, specs): stored scores of other tasks are not reused."""
    data = [{"name": s.name, "examples": int(s.num_examples)} for s in engine_tasks]
    data += [t.model_dump(mode="json") if hasattr(t, "model_dump") else repr(t) for t in recipe_tasks]
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _score(resident: Any, engine: Any, trial: Any) -> dict[str, Any]:
    write_candidate(
        resident,
        engine,
        np.asarray(trial.user_attrs["weights"], dtype=np.float64),
        trial.user_attrs.get("density"),
    )
    res = score_all(resident, engine)
    return {
        "scores": {n: float(r.value) for n, r in res.items()},
        "per_example": {n: [float(x) for x in r.per_example] for n, r in res.items()},
    }


def validation_scores(
    study: Any, trials: Sequence[Any], resident: Any, engine: Any, key: str, lock: Any = None
) -> dict[int, dict[str, Any]]:
    """Trial number -> ``{"scores", "per_example"}`` on the validation split, stored in the study.

    Under the study's ``lock``, scores read from the study are reused and the missing ones
    are scored and stored, so that several workers score each trial once and agree.
    """
    import contextlib

    out: dict[int, dict[str, Any]] = {}
    with lock.held() if lock is not None else contextlib.nullcontext():
        stored = study.user_attrs
        for trial in trials:
            name = f"{VALIDATION_ATTR}:{key}:{trial.number}"
            if name not in stored:
                logger.info("scoring trial %d on the validation split", trial.number)
                study.set_user_attr(name, _score(resident, engine, trial))
                stored = study.user_attrs
            out[trial.number] = stored[name]
    return out


def search_scores(trial: Any, resident: Any, engine: Any) -> dict[str, Any]:
    """``{"scores", "per_example"}`` of ``trial`` on the search split: as the trial stored them,
    else (a study made by an older version) scored again."""
    stored = trial.system_attrs.get(PER_EXAMPLE_ATTR)
    names = {s.name for s in engine.tasks}
    if isinstance(stored, Mapping) and set(stored) == names:
        return {"scores": dict(trial.user_attrs["scores"]), "per_example": stored}
    return _score(resident, engine, trial)


def choose_winner(
    study: Any,
    setup: Any,
    resident: Any,
    search_engine: Any,
    validation_engine: Any,
    pool: Sequence[Any],
    baselines: Mapping[str, Any],
    *,
    tried: int,
    lock: Any = None,
) -> tuple[Selection, dict[int, dict[str, float]]]:
    """Choose the returned model among the optimized trials ``pool`` and the ``baselines``.

    Args:
        study: The finished study.
        setup: The search's :class:`~hf_recycle._search.api.SearchSetup`.
        resident: The candidate model the contenders are written into when scored.
        search_engine: The search split's engine.
        validation_engine: The validation split's engine, or ``None``.
        pool: The optimized trials to choose from (complete; the Pareto front's for ``pareto``).
        baselines: Baseline name -> its trial.
        tried: Optimized trials the study ran (complete or pruned).
        lock: The study's lock (:class:`~hf_recycle._search.worker.StudyLock`).

    Returns:
        The :class:`Selection`, and trial number -> validation scores (with ``mean``) of every
        trial scored on the validation split (empty without one).
    """
    from hf_recycle._search.report import scores_dict

    settings = setup.recipe.search.select
    ranked = sorted(pool, key=lambda t: (-float(t.user_attrs["mean"]), t.number))[: settings.top]
    contenders = list({t.number: t for t in [*ranked, *baselines.values()]}.values())
    if validation_engine is not None:
        key = tasks_key(validation_engine.tasks, getattr(setup.recipe, "tasks", ()))
        scored = validation_scores(study, contenders, resident, validation_engine, key, lock)
        tasks = list(validation_engine.tasks)
    else:
        scored = {t.number: search_scores(t, resident, search_engine) for t in contenders}
        tasks = list(search_engine.tasks)
    means = {n: macro_mean(s["scores"], tasks) for n, s in scored.items()}

    def contender(trial: Any, name: str | None = None) -> Contender:
        label = baseline_label(name, trial.user_attrs.get("checkpoint")) if name else None
        return Contender(
            trial=trial.number,
            search_mean=float(trial.user_attrs["mean"]),
            mean=means[trial.number],
            per_example={
                n: np.asarray(v, dtype=np.float64) for n, v in scored[trial.number]["per_example"].items()
            },
            baseline=name,
            label=label,
        )

    selection = decide(
        [contender(t) for t in ranked],
        [contender(t, name) for name, t in baselines.items()],
        split="validation" if validation_engine is not None else "search",
        tried=tried,
        alpha=settings.alpha,
        weights={s.name: s.weight for s in tasks},
        higher_is_better={s.name: s.higher_is_better for s in tasks},
        top=settings.top,
        seed=setup.recipe.search.seed,
    )
    log = logger.warning if selection.baseline_returned else logger.info
    log("returned model: %s", selection.record["chosen_because"])
    validation = (
        {n: scores_dict(s["scores"], means[n]) for n, s in scored.items()}
        if validation_engine is not None
        else {}
    )
    return selection, validation
