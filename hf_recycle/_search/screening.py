"""Checkpoints that the optimizer leaves out: diverged ones, which poison any merge that includes them.

A diverged checkpoint (a run whose loss blew up) scores near zero on every task, and a merge that
gives it even a small weight often scores zero too; the uniform soup then sits in that region, and
so does much of the simplex that a sampler explores. The baselines already say which checkpoints
these are, and a checkpoint is left out when both hold:

1. alone, it is far below the best on every task (:func:`screen_out`): worse than ``ratio`` times
   the best single score on that task (for a task where lower is better: above the best divided
   by ``ratio``); a task whose best score is not positive (a loglikelihood) does not vote, and
   with no task voting nothing is left out;
2. it poisons a merge (:func:`poisons_greedy_soup`): the greedy soup's step that added it to the
   soup scored below ``ratio`` times that soup (for a soup whose search mean is negative: below
   that mean divided by ``ratio``).

A checkpoint that is weak alone but merges well (its greedy step did not collapse) is kept: the
optimum may need it. Without the greedy soup baseline nothing is left out (the caller checks:
with two checkpoints the uniform soup is the greedy soup's only step).

The sampled trials' weights of those checkpoints are then set to 0 (and a simplex row renormalized
over the others: :func:`mask_weights`); the baselines still merge them as they are defined. The
sampler keeps its parameters, so a study, its workers and a resume are unchanged; each masked trial
records what it left out (``screened_out``) and its weights are the ones merged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: Trial attribute: the checkpoints whose weight was set to 0 in this trial.
SCREENED_ATTR = "screened_out"


def single_task_scores(trials: Sequence[Any], n_checkpoints: int) -> list[dict[str, float]] | None:
    """Per-task search scores of each checkpoint alone, from the complete single baselines (None: not all done)."""
    singles: dict[int, dict[str, float]] = {}
    for t in trials:
        if t.user_attrs.get("baseline") == "single" and "scores" in t.user_attrs:
            singles.setdefault(int(t.user_attrs["checkpoint"]), dict(t.user_attrs["scores"]))
    if len(singles) < n_checkpoints:
        return None
    return [singles[i] for i in range(n_checkpoints)]


def poisons_greedy_soup(
    single_means: Sequence[float], soups: dict[frozenset[int], float], ratio: float
) -> set[int] | None:
    """The checkpoints whose greedy soup step dropped the soup it was added to below ``ratio`` times
    its search mean (a negative mean: below it divided by ``ratio``; a zero mean says nothing);
    ``None`` until the greedy soup ends."""
    from hf_recycle._search.baselines import greedy_soup_step

    state = greedy_soup_step(single_means, soups)
    if not state.done:
        return None
    members = frozenset([state.order[0]])
    score = float(single_means[state.order[0]])
    out = set()
    for candidate in state.order[1:]:
        tried = soups[members | {candidate}]
        if (score > 0 and tried < ratio * score) or (score < 0 and tried < score / ratio):
            out.add(candidate)
        if tried > score:
            members, score = members | {candidate}, tried
    return out


def screen_out(
    scores: Sequence[dict[str, float]], higher_is_better: dict[str, bool], ratio: float
) -> tuple[int, ...]:
    """The checkpoints that score worse than ``ratio`` times the best single on every task that votes
    (one whose best score is positive); none when no task votes."""
    tasks = list(higher_is_better)
    out = []
    for i, own in enumerate(scores):
        votes = []
        for task in tasks:
            values = [s[task] for s in scores]
            best = max(values) if higher_is_better[task] else min(values)
            if best <= 0:  # a ratio of a score that is not positive means nothing: no vote
                continue
            votes.append(own[task] < ratio * best if higher_is_better[task] else own[task] > best / ratio)
        if votes and all(votes):
            out.append(i)
    return tuple(out)


def screen_ratio(search: Any) -> float | None:
    """The recipe's ``search.screen`` when sampled trials are screened, else None: ``screen: false``,
    or no ``greedy_soup`` baseline (its steps are the second sign)."""
    if search.screen is False or "greedy_soup" not in search.baselines:
        return None
    return float(search.screen)


def mask_weights(weights: np.ndarray, out: Sequence[int], parameterization: str) -> np.ndarray:
    """``weights`` ``(G, K)`` with the columns ``out`` set to 0; a simplex row is renormalized over
    the other checkpoints (a row that had all its weight on them becomes their uniform soup)."""
    if not out:
        return weights
    masked = np.array(weights, dtype=np.float64)
    masked[:, list(out)] = 0.0
    if parameterization in ("simplex", "simplex_box"):
        keep = np.ones(masked.shape[1], dtype=bool)
        keep[list(out)] = False
        sums = masked.sum(axis=1, keepdims=True)
        uniform = np.where(keep, 1.0 / keep.sum(), 0.0)[None, :].repeat(masked.shape[0], axis=0)
        masked = np.where(sums > 0, masked / np.where(sums > 0, sums, 1.0), uniform)
    return masked


class Screen:
    """What a study's sampled trials leave out, once every single baseline is scored.

    Args:
        n_checkpoints: K.
        higher_is_better: Per task of the search.
        ratio: The share of the best single score below which (on every task) a checkpoint is left out.
    """

    def __init__(self, n_checkpoints: int, higher_is_better: dict[str, bool], ratio: float) -> None:
        self.n_checkpoints = n_checkpoints
        self.higher_is_better = higher_is_better
        self.ratio = ratio
        self._out: tuple[int, ...] | None = None  # fixed once every single is scored

    def out(self, trials: Sequence[Any]) -> tuple[int, ...]:
        """The checkpoints left out, given the study's complete trials (none before every single is scored)."""
        if self._out is None:
            from hf_recycle._search.study import single_scores, soup_scores

            scores = single_task_scores(trials, self.n_checkpoints)
            means = single_scores(trials, self.n_checkpoints)
            if scores is None or means is None:
                return ()
            poisons = poisons_greedy_soup(means, soup_scores(trials, self.n_checkpoints), self.ratio)
            if poisons is None:
                return ()
            weak = screen_out(scores, self.higher_is_better, self.ratio)
            self._out = tuple(i for i in weak if i in poisons)
            if len(self._out) == self.n_checkpoints - 1:  # the greedy soup's first member is never out
                logger.warning(
                    "screening leaves one of %d checkpoints in the sampled trials, so they all merge the same "
                    "weights: drop the diverged checkpoint(s) %s from the pool, or set search.screen: false",
                    self.n_checkpoints,
                    ", ".join(map(str, self._out)),
                )
            if self._out:
                logger.info(
                    "sampled trials leave out checkpoint(s) %s: alone, each scores below %g of the best single "
                    "on every task, and adding it to the greedy soup dropped the soup's score below %g of what "
                    "it was (search.screen: false keeps them)",
                    ", ".join(map(str, self._out)),
                    self.ratio,
                    self.ratio,
                )
        return self._out


def screened_record(trials: Sequence[Any], pins: Sequence[Any], ratio: float) -> dict[str, Any] | None:
    """``screened`` of results.json: the checkpoints the sampled trials left out (None: none)."""
    out = sorted({int(i) for t in trials for i in t.user_attrs.get(SCREENED_ATTR, ())})
    if not out:
        return None
    scores = single_task_scores(trials, len(pins)) or [{} for _ in pins]
    return {
        "ratio": ratio,
        "checkpoints": [{"index": i, "spec": pins[i].spec, "search": scores[i]} for i in out],
    }


def screened_text(results: dict[str, Any]) -> str | None:
    """One line for the summary and results.md (None: nothing was left out)."""
    screened = results.get("screened")
    if not screened:
        return None
    specs = ", ".join(c["spec"] for c in screened["checkpoints"])
    return (
        f"left out of the sampled merges: {specs} (alone, below {screened['ratio']:g} of the best single "
        "score on every task, and it poisoned the greedy soup; search.screen: false keeps them)"
    )
