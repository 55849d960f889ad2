"""Racing: score a candidate on growing prefixes of the search split, stop it once it cannot win.

Most of a search's cost is scoring candidates that are clearly worse than the best merge found
so far. With racing (``search.racing``, on by default for ``objective: mean``) a sampled trial is
scored on the first ``r`` of each task's search split for each rung ``r`` (default 1/8, 1/4,
1/2; the examples keep their order, so prefixes of two trials are the same examples), and it
goes on to the next rung only while it can still reach the top.

The reference is the complete trial of best search mean so far (at first the best baseline),
read from the study (its per-example scores are a system attribute of every complete trial,
:data:`~hf_recycle._search.objective.PER_EXAMPLE_ATTR`), so workers sharing a study race
against the same trials. On a prefix of ``n_t`` of the ``N_t`` examples of each task ``t`` the
statistic is the paired difference candidate − reference of the task-weighted macro-average
of per-example scores (lower-is-better tasks negated; the statistic of the test-split
bootstrap and of the winner's selection):

    D̂ = Σ_t (w_t / W) s_t d̄_t,   Var(D̂) = Σ_t (w_t / W)² σ̂_t² / n_t · (1 − n_t / N_t)

``d̄_t`` and ``σ̂_t`` being the mean and standard deviation of the per-example differences on
the prefix. ``D̂`` estimates the difference on the *whole* split (the finite-population
correction ``1 − n_t / N_t`` counts the examples already known exactly). The trial stops
(pruned, with the user attribute ``raced_out_at``) when even the optimistic bound
``D̂ + z·√Var(D̂)`` is below zero (beyond float rounding), ``z`` being the normal quantile of
``confidence``: at that confidence, scoring the rest would not have made it better than the
reference. A rung is used only when every task's prefix has at least ``min_examples`` examples
(or is the whole split), since the normal approximation needs them. Baselines are never raced.

Every trial records the examples it scored (the user attribute ``examples_scored``, summed
over tasks), so a search can report what it scored against what scoring every trial on every
example would have cost (:func:`examples_summary`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "EXAMPLES_ATTR",
    "RACED_OUT_ATTR",
    "Race",
    "Reference",
    "examples_summary",
    "examples_text",
    "race",
    "reference_trial",
    "rung_limits",
]

#: User attribute of every trial that scored examples: the examples scored, summed over tasks.
EXAMPLES_ATTR = "examples_scored"
#: User attribute of a trial stopped by racing: the rung (share of each search split) it stopped at.
RACED_OUT_ATTR = "raced_out_at"
#: Differences within this share of the scores' magnitude are float rounding, not evidence.
TIE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Reference:
    """The trial a candidate races against.

    Attributes:
        trial: Its number.
        mean: Its search mean.
        per_example: Task name -> its per-example scores on the whole search split.
    """

    trial: int
    mean: float
    per_example: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Race:
    """The state of a candidate against the reference on a prefix.

    Attributes:
        difference: ``D̂``, the estimated whole-split difference candidate − reference.
        bound: ``D̂ + z·√Var(D̂)``, its optimistic bound.
        examples: Examples of the prefix, summed over tasks.
    """

    difference: float
    bound: float
    examples: int
    tie: float = 0.0

    @property
    def out(self) -> bool:
        """Whether even the optimistic bound is below the reference (by more than rounding, ``tie``)."""
        return self.bound < -self.tie


def rung_limits(
    rungs: Sequence[float], sizes: Mapping[str, int], min_examples: int
) -> list[tuple[float, dict[str, int]]]:
    """The rungs worth a decision, each with its examples per task.

    A rung gives each task ``ceil(r · N_t)`` examples (at least 1, as
    :meth:`~hf_recycle._score.engines.ScoringEngine.limits`). It is kept when some task is
    still short of its whole split, every task has ``min_examples`` or its whole split, and
    it adds examples to the rung before it.

    Args:
        rungs: Increasing shares of each split, in (0, 1).
        sizes: Task name -> examples of its search split.
        min_examples: The fewest examples of a task's prefix that a decision rests on.
    """
    kept: list[tuple[float, dict[str, int]]] = []
    for r in rungs:
        limits = {t: min(n, max(1, math.ceil(r * n))) for t, n in sizes.items()}
        if all(limits[t] == n for t, n in sizes.items()):
            break  # the whole split: that is the full score
        if any(limits[t] < min(min_examples, n) for t, n in sizes.items()):
            continue
        if kept and kept[-1][1] == limits:
            continue
        kept.append((r, limits))
    return kept


def reference_trial(trials: Sequence[Any], tasks: Sequence[Any]) -> Reference | None:
    """The complete trial of best search mean whose per-example scores cover ``tasks``.

    Args:
        trials: The study's trials (``FrozenTrial``).
        tasks: The search tasks (``name`` and ``num_examples``).

    Returns:
        The reference, or ``None`` when no complete trial has its per-example scores yet.
    """
    from optuna.trial import TrialState

    from hf_recycle._search.objective import PER_EXAMPLE_ATTR

    best: Any = None
    for t in trials:
        if t.state != TrialState.COMPLETE or "mean" not in t.user_attrs:
            continue
        stored = t.system_attrs.get(PER_EXAMPLE_ATTR)
        if not isinstance(stored, Mapping) or any(s.name not in stored for s in tasks):
            continue  # a study written before per-example scores were stored
        if best is None or float(t.user_attrs["mean"]) > float(best.user_attrs["mean"]):
            best = t
    if best is None:
        return None
    stored = best.system_attrs[PER_EXAMPLE_ATTR]
    return Reference(
        trial=best.number,
        mean=float(best.user_attrs["mean"]),
        per_example={s.name: np.asarray(stored[s.name], dtype=np.float64) for s in tasks},
    )


def race(
    candidate: Mapping[str, Sequence[float]],
    reference: Reference,
    tasks: Sequence[Any],
    confidence: float,
) -> Race | None:
    """Candidate − reference on the candidate's prefix (see the module docstring).

    Args:
        candidate: Task name -> the candidate's per-example scores on a prefix of its split.
        reference: The reference, scored on the whole split.
        tasks: The tasks (``name``, ``weight``, ``higher_is_better``).
        confidence: One-sided confidence of the optimistic bound.

    Returns:
        The race, or ``None`` when the prefixes do not pair with the reference's scores
        (a longer prefix than the reference has): the candidate is then scored in full.
    """
    z = NormalDist().inv_cdf(confidence)
    total = math.fsum(s.weight for s in tasks)
    difference, variance, examples, scale = 0.0, 0.0, 0, 0.0
    for s in tasks:
        c = np.asarray(candidate[s.name], dtype=np.float64)
        ref = reference.per_example[s.name]
        n, big_n = c.size, ref.size
        if n == 0 or n > big_n:
            return None
        d = c - ref[:n]
        share = s.weight / total * (1.0 if s.higher_is_better else -1.0)
        difference += share * float(d.mean())
        scale += abs(share) * float(np.abs(ref[:n]).mean())
        if n < big_n:
            sd2 = float(d.var(ddof=1)) if n > 1 else 0.0
            variance += share**2 * sd2 / n * (1.0 - n / big_n)
        examples += n
    # a merge equal to the reference up to float rounding (its weights written back) is a tie
    tie = TIE_TOLERANCE * max(scale, 1.0)
    return Race(difference, difference + z * math.sqrt(variance), examples, tie)


def examples_summary(trials: Sequence[Any], per_trial: int, method: str) -> dict[str, Any]:
    """``examples_scored`` of results.json: what the search's trials scored.

    Args:
        trials: The study's trials (``FrozenTrial``).
        per_trial: Examples of a trial scored on every example (the search splits' sizes, summed).
        method: ``racing``, ``pruning`` or ``none``: what stopped trials early.

    Returns:
        ``{"total", "full", "trials", "method"}``: examples scored by every trial (search splits),
        what scoring each of those ``trials`` on every example would have cost, and ``method``.
    """
    counts = [int(t.user_attrs[EXAMPLES_ATTR]) for t in trials if t.user_attrs.get(EXAMPLES_ATTR)]
    return {"total": sum(counts), "full": len(counts) * per_trial, "trials": len(counts), "method": method}


def examples_text(summary: Mapping[str, Any]) -> str:
    """One line for the search log and the command's summary."""
    total, full = summary["total"], summary["full"]
    how = {"racing": "racing", "pruning": "median pruning"}.get(summary["method"], "no early stopping")
    if total and total < full:
        how += f": {full / total:.3g}x fewer"
    return (
        f"examples scored: {total:,} of the {full:,} that scoring its {summary['trials']} trial(s) "
        f"on every example would take ({how})"
    )
