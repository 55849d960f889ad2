"""Which model a search returns, chosen so that its held-out score is not a lottery.

The trial of best search score is the maximum of many noisy estimates: its search score is
biased upward (the winner's curse), and on held-out data it may be no better than the
uniform soup. So the search does not simply return it:

- **With a validation split** (every task has ``validation_split``, which the optimizer never
  sees): the ``search.select.top`` optimized trials of best search mean (``M``) and the
  baselines are scored on it. The reference is the baseline of best validation mean. An
  optimized trial *beats* it when its one-sided paired sign-flip test on the validation
  examples, max-T adjusted over the ``M`` candidates (:func:`sign_flip_max_test`; they were
  chosen without looking at the validation split), gives ``p_adjusted <= alpha``. Max-T is
  exact for the family and sharper than Bonferroni (``p <= alpha / M``) when the candidates
  are alike, as the top trials of a search are. The winner is the candidate of best validation
  mean among those that beat the reference; when none does, it is the reference baseline.
- **Without one**: the reference is the baseline of best search mean, and the ``M`` best
  optimized trials are tested against it on the search examples with Bonferroni over ``N``,
  every optimized trial the study ran (complete or pruned; each was a candidate the search
  looked at, and a raced-out one has no scores on every example for a max-T): ``p_adjusted =
  N p <= alpha``. The optimizer chose its trials by looking at these same examples, so this
  correction is an approximation: a validation split is the clean way.

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


def baseline_label(name: str, checkpoint: int | None = None) -> str:
    """``uniform`` -> ``uniform soup``; ``best_single`` with its checkpoint -> ``best single checkpoint (#2)``."""
    label = BASELINE_LABELS.get(name, name)
    return f"{label} (#{checkpoint})" if name == "best_single" and checkpoint is not None else label


def _signed_parts(
    a: Mapping[str, Sequence[float]],
    b: Mapping[str, Sequence[float]],
    weights: Mapping[str, float],
    higher_is_better: Mapping[str, bool],
) -> np.ndarray:
    """Per example, its share of the statistic: ``(a − b) · s_t w_t / W / n_t`` (the statistic is the sum)."""
    total = math.fsum(weights[t] for t in a)
    parts = []
    for t in a:
        x, y = np.asarray(a[t], dtype=np.float64), np.asarray(b[t], dtype=np.float64)
        if x.shape != y.shape or x.size == 0:
            raise ValueError(f"task '{t}': paired scores need the same non-empty examples for both models")
        sign = 1.0 if higher_is_better[t] else -1.0
        parts.append((x - y) * (sign * weights[t] / total / x.size))
    return np.concatenate(parts)


def sign_flip_max_test(
    candidates: Sequence[Mapping[str, Sequence[float]]],
    b: Mapping[str, Sequence[float]],
    weights: Mapping[str, float],
    higher_is_better: Mapping[str, bool],
    *,
    resamples: int = MIN_RESAMPLES,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One-sided paired sign-flip tests that each candidate beats model B, adjusted for their number.

    The adjustment is the single-step max-T of Westfall and Young: one sign pattern flips the
    same examples of every candidate, each candidate's statistic is divided by its standard
    deviation over the patterns (``√Σv²``, so that no candidate rules the max by differing from
    B on more examples), and a candidate's adjusted p-value is the share of patterns whose
    *largest* standardized statistic over the candidates is at least its observed one. This
    controls the family-wise error rate like Bonferroni does, but counts how alike the
    candidates are: ``M`` near-identical merges cost about one test, not ``M``. With one
    candidate it is the plain test (:func:`sign_flip_test`).

    Args:
        candidates: Per candidate, per task, per-example scores (the examples of ``b``, in its order).
        b: Per task, per-example scores of the model the candidates are held against.
        weights: Task weights.
        higher_is_better: Task directions.
        resamples: Random sign patterns when more than :data:`EXACT_MAX` examples differ.
        seed: Seed of the random patterns.

    Returns:
        Per candidate, ``{"difference", "p_value", "p_adjusted", "exact"}``: its macro-average
        minus that of B, its own p-value, the max-T adjusted one, and whether every pattern was
        enumerated (else the Monte Carlo ``(1 + hits) / (1 + resamples)``, valid for both).

    Raises:
        ValueError: A candidate was scored on other examples than B.
    """
    if not candidates:
        return []
    v = np.stack([_signed_parts(a, b, weights, higher_is_better) for a in candidates], axis=1)  # n x M
    differences = v.sum(axis=0)
    v = v[np.any(v != 0, axis=1)]  # flipping an example no candidate differs on changes nothing
    n = v.shape[0]
    if n == 0:
        return [
            {"difference": float(d), "p_value": 1.0, "p_adjusted": 1.0, "exact": True} for d in differences
        ]
    # each statistic over its sign-flip standard deviation (√Σv², the same for every pattern): the
    # max is then not ruled by the candidate that differs from B on the most examples
    spread = np.sqrt(np.square(v).sum(axis=0))
    spread[spread == 0] = 1.0
    # the observed pattern counts despite rounding
    cut = (differences - 1e-9 * np.abs(v).sum(axis=0)) / spread
    v = v / spread
    if n <= EXACT_MAX:
        bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
        stats = (2 * bits - 1) @ v
        own = np.mean(stats >= cut, axis=0)
        adjusted = np.mean(stats.max(axis=1)[:, None] >= cut, axis=0)
        exact = True
    else:
        rng = np.random.default_rng(seed)
        hits, max_hits = np.zeros(v.shape[1]), np.zeros(v.shape[1])
        left, rows, total = int(resamples), max(1, (1 << 22) // (n * v.shape[1])), v.sum(axis=0)
        while left > 0:
            r = min(rows, left)
            # random bits (8 per random byte), the signs are 2 bits - 1: a statistic is 2 bits @ v - Σv
            bits = np.unpackbits(rng.integers(0, 256, (r, (n + 7) // 8), dtype=np.uint8), axis=1, count=n)
            stats = 2.0 * (bits.astype(np.float64) @ v) - total
            hits += np.count_nonzero(stats >= cut, axis=0)
            max_hits += np.count_nonzero(stats.max(axis=1)[:, None] >= cut, axis=0)
            left -= r
        count = 1 + int(resamples)
        own, adjusted, exact = (1 + hits) / count, (1 + max_hits) / count, False
    return [
        {
            "difference": float(differences[j]),
            "p_value": float(own[j]),
            "p_adjusted": float(adjusted[j]),
            "exact": exact,
        }
        for j in range(v.shape[1])
    ]


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
    out = sign_flip_max_test([a], b, weights, higher_is_better, resamples=resamples, seed=seed)[0]
    return {k: out[k] for k in ("difference", "p_value", "exact")}


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
    # with a validation split the family is the candidates (max-T counts how alike they are);
    # without one, every optimized trial tried was a candidate, of which only these were kept
    validation = split == "validation"
    tests = max(len(candidates) if validation else max(tried, len(candidates)), 1)
    resamples = max(MIN_RESAMPLES, math.ceil(20 * tests / alpha))  # alpha / tests is well resolved
    rows: list[dict[str, Any]] = []
    passed: list[Contender] = []
    if reference is not None and candidates:
        tested = sign_flip_max_test(
            [c.per_example for c in candidates],
            reference.per_example,
            weights,
            higher_is_better,
            resamples=resamples,
            seed=seed,
        )
    for i, c in enumerate(candidates):
        row: dict[str, Any] = {"trial": c.trial, "search": c.search_mean}
        if validation:
            row["validation"] = c.mean
        if reference is not None:
            test = tested[i]
            adjusted = test["p_adjusted"] if validation else min(1.0, test["p_value"] * tests)
            row.update(
                difference=test["difference"],
                p_value=test["p_value"],
                p_adjusted=adjusted,
                passed=adjusted <= alpha,
            )
            if row["passed"]:
                passed.append(c)
        rows.append(row)

    k = len(candidates)
    if split == "validation":
        rule = (
            f"the {k} optimized trial(s) of best search mean and the baselines were scored on each task's "
            f"validation_split; an optimized trial is returned only when it beats the best baseline there "
            f"(one-sided paired sign-flip test, max-T adjusted over the {tests} candidates: p_adjusted <= alpha), "
            "else that baseline"
        )
    else:
        rule = (
            f"no validation split: the {k} optimized trial(s) of best search mean were tested against the "
            f"best baseline on the search split (one-sided paired sign-flip test, Bonferroni over the "
            f"{tests} optimized trials tried: p_adjusted = {tests} p <= alpha); an optimized trial is "
            "returned only when it passes, else that baseline"
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
            f"(adjusted p = {row['p_adjusted']:.2g} <= {alpha:g}, {tests} "
            + ("candidates" if validation else "trials tried")
            + ")"
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
        "correction": "max-t" if validation else "bonferroni",
        "tests": tests,
        "alpha": float(alpha),
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
