"""The baselines every search is compared with, as weight vectors and soup sets.

- ``uniform``: the uniform soup, weight 1/K on every checkpoint.
- singles: weight 1 on one checkpoint; ``best_single`` is the one of highest search score.
- ``greedy_soup`` (Wortsman et al. 2022, "Model soups", arXiv 2203.05482): sort the
  checkpoints by their own search score, start from the best one, and add each next
  one to the soup (a uniform average of its members) when that improves the soup's
  search score.

These run as enqueued trials of the study, so the winner can never score below them
on the search split. Greedy soup is sequential: :func:`greedy_soup_step` says which
soup to evaluate next given the scores known so far.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

BASELINES = ("uniform", "best_single", "greedy_soup")


def soup_weights(members: Sequence[int] | frozenset[int], n_checkpoints: int) -> np.ndarray:
    """Uniform weights over ``members`` (a soup), zero elsewhere."""
    members = sorted(members)
    if not members:
        raise ValueError("a soup needs at least one member")
    w = np.zeros(n_checkpoints)
    w[members] = 1.0 / len(members)
    return w


def uniform_weights(n_checkpoints: int) -> np.ndarray:
    """The uniform soup."""
    return soup_weights(range(n_checkpoints), n_checkpoints)


def single_weights(index: int, n_checkpoints: int) -> np.ndarray:
    """Weight 1 on checkpoint ``index``."""
    return soup_weights([index], n_checkpoints)


@dataclass(frozen=True)
class GreedyState:
    """Where greedy soup stands.

    Attributes:
        next_members: The soup to evaluate next, or ``None`` when greedy soup is done.
        members: The members of the current (accepted) soup.
        score: The current soup's search score.
        order: Checkpoints sorted by their own score, best first.
    """

    next_members: frozenset[int] | None
    members: frozenset[int]
    score: float
    order: tuple[int, ...]

    @property
    def done(self) -> bool:
        """Whether every checkpoint has been tried."""
        return self.next_members is None


def greedy_soup_step(
    single_scores: Sequence[float], soup_scores: Mapping[frozenset[int], float]
) -> GreedyState:
    """Replay greedy soup over the scores known so far.

    Args:
        single_scores: Search score of each checkpoint alone (higher is better).
        soup_scores: Search score of every soup evaluated so far, keyed by its members
            (the uniform soup is the soup of all checkpoints).

    Returns:
        The state after replaying every step whose soup has a score; ``next_members``
        is the first soup still to evaluate.
    """
    order = tuple(sorted(range(len(single_scores)), key=lambda i: (-single_scores[i], i)))
    members = frozenset([order[0]])
    score = float(single_scores[order[0]])
    for candidate in order[1:]:
        trial = members | {candidate}
        if trial not in soup_scores:
            return GreedyState(trial, members, score, order)
        if soup_scores[trial] > score:
            members, score = trial, float(soup_scores[trial])
    return GreedyState(None, members, score, order)


def greedy_soup_max_trials(n_checkpoints: int, with_uniform: bool) -> int:
    """The most soups greedy soup evaluates beyond the singles and the uniform soup.

    There are K - 1 steps; with K == 2 the only step is the uniform soup itself.
    """
    if n_checkpoints == 2 and with_uniform:
        return 0
    return n_checkpoints - 1
