"""The trial objective: write a candidate into the resident model, score it, return the value(s).

Scorers follow the :class:`hf_recycle._score.scorer.TaskScorer` interface: ``name``,
``weight``, ``higher_is_better``, ``num_examples`` and ``score(model, limit=None, resume=None)``
returning a result with ``value`` and ``per_example``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from hf_recycle._score.engines import ScoringEngine, as_engine
from hf_recycle._search.racing import EXAMPLES_ATTR, RACED_OUT_ATTR, race, reference_trial, rung_limits
from hf_recycle._search.screening import SCREENED_ATTR, Screen, mask_weights
from hf_recycle._search.space import SearchSpace
from hf_recycle._search.study import DUPLICATE_ATTR, earlier_twin

if TYPE_CHECKING:  # pragma: no cover
    import optuna

logger = logging.getLogger(__name__)

#: System attribute of a complete trial: task name -> its per-example search-split scores
#: (the winner's selection tests on them, :mod:`hf_recycle._search.selection`).
PER_EXAMPLE_ATTR = "hf_recycle_per_example"


class Scorer(Protocol):
    """What the search needs of a task scorer (see :class:`hf_recycle._score.scorer.TaskScorer`)."""

    name: str
    weight: float
    higher_is_better: bool
    num_examples: int

    def score(self, model: Any, limit: int | None = None, *, resume: Any = None) -> Any:
        """Score the live model on the first ``limit`` examples (all when ``None``), reusing
        the outputs of ``resume``, an earlier shorter result for the same weights."""


class CandidateModel(Protocol):
    """What the search needs of the resident model (see :class:`~hf_recycle._search.resident.ResidentModel`)."""

    model: Any

    def set_weights(self, weights: np.ndarray, density: float | None = None) -> None:
        """Write the merge of ``weights`` into ``model``."""


def macro_mean(values: dict[str, float], scorers: Sequence[Scorer]) -> float:
    """Task-weighted mean of ``values``, lower-is-better tasks negated: the objective to maximize."""
    from hf_recycle._score.aggregate import oriented_mean

    return oriented_mean((values[s.name], s.weight, s.higher_is_better) for s in scorers)


def score_all(
    candidate_model: CandidateModel,
    scorers: ScoringEngine | Sequence[Scorer],
    limit_fraction: float | None = None,
    resume: dict | None = None,
) -> dict:
    """Score the live model on every task, with the scoring engine (or per-task scorers run in turn).

    Args:
        candidate_model: Holds the live model.
        scorers: A :class:`~hf_recycle._score.engines.ScoringEngine`, or one scorer per task.
        limit_fraction: Score only this share of each split.
        resume: Results of an earlier ``limit_fraction`` call for the same weights: only
            the examples after those are scored.
    """
    return as_engine(scorers).score(candidate_model.model, limit_fraction=limit_fraction, resume=resume)


def write_candidate(
    candidate_model: CandidateModel,
    scorers: ScoringEngine | Sequence[Scorer],
    weights: np.ndarray,
    density: float | None = None,
) -> None:
    """Write the merge of ``weights`` into the live model and tell the scoring engine."""
    candidate_model.set_weights(weights, density)
    as_engine(scorers).weights_changed(candidate_model.model)


class TrialObjective:
    """The callable handed to ``study.optimize``.

    Args:
        space: The search space.
        candidate_model: The resident model candidates are written into.
        scorers: The scoring engine, or one scorer per task (search split).
        objective: ``mean`` (one value: :func:`macro_mean`) or ``pareto`` (one value per task).
        pruning_fraction: When set, score this share of each split first, report it and
            let the study's pruner stop the trial (baselines are never pruned).
        racing: When set (``rungs``, ``confidence``, ``min_examples``: the recipe's
            ``search.racing``), race each sampled trial against the best complete trial on
            growing prefixes of the splits (:mod:`hf_recycle._search.racing`).
        screen: When set (the recipe's ``search.screen``), sampled trials give no weight to the
            checkpoints that score below this share of the best single on every task
            (:mod:`hf_recycle._search.screening`), once every single baseline is scored.

    Every trial that scores examples records how many (user attribute ``examples_scored``).
    """

    def __init__(
        self,
        space: SearchSpace,
        candidate_model: CandidateModel,
        scorers: ScoringEngine | Sequence[Scorer],
        objective: str = "mean",
        pruning_fraction: float | None = None,
        racing: Any = None,
        screen: float | None = None,
    ) -> None:
        self.space = space
        self.candidate_model = candidate_model
        self.engine = as_engine(scorers)
        self.scorers = list(self.engine.tasks)
        self.objective = objective
        self.pruning_fraction = pruning_fraction
        self.racing = racing if objective == "mean" else None
        sizes = {s.name: int(s.num_examples) for s in self.scorers}
        self.rungs = rung_limits(racing.rungs, sizes, racing.min_examples) if self.racing else []
        self.full_examples = sum(sizes.values())
        self.screen = (
            Screen(space.n_checkpoints, {s.name: s.higher_is_better for s in self.scorers}, screen)
            if screen is not None and objective == "mean"
            else None
        )

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        import optuna

        twin = earlier_twin(trial, self.space.n_checkpoints)
        if twin is not None:  # another worker enqueued this baseline too
            trial.set_user_attr(DUPLICATE_ATTR, twin)
            raise optuna.TrialPruned(f"trial {twin} runs the same baseline")
        candidate = self.space.suggest(trial)
        if self.screen is not None and "baseline" not in trial.user_attrs:
            from optuna.trial import TrialState

            out = self.screen.out(trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
            if out:
                weights = mask_weights(candidate.weights, out, self.space.parameterization)
                candidate = dataclasses.replace(candidate, weights=weights)
                trial.set_user_attr(SCREENED_ATTR, list(out))
        write_candidate(self.candidate_model, self.engine, candidate.weights, candidate.density)
        trial.set_user_attr("weights", candidate.weights.tolist())
        for name, value in self.space.weight_attrs(candidate.weights).items():
            trial.set_user_attr(name, value)
        if candidate.density is not None:
            trial.set_user_attr("density", candidate.density)
        partial = None
        if self.pruning_fraction is not None and self.objective == "mean":
            partial = score_all(self.candidate_model, self.engine, self.pruning_fraction)
            trial.set_user_attr(EXAMPLES_ATTR, self._examples(self.pruning_fraction))
            value = macro_mean({n: r.value for n, r in partial.items()}, self.scorers)
            trial.report(value, step=0)
            if "baseline" not in trial.user_attrs and trial.should_prune():
                trial.set_user_attr("partial_mean", value)
                raise optuna.TrialPruned(f"partial score {value:.4g} is below the pruner's threshold")
        elif self.rungs and "baseline" not in trial.user_attrs:
            partial = self._race(trial)
        results = score_all(self.candidate_model, self.engine, resume=partial)  # the rest of each split
        trial.set_user_attr(EXAMPLES_ATTR, self.full_examples)
        values = {n: float(r.value) for n, r in results.items()}
        mean = macro_mean(values, self.scorers)
        trial.set_user_attr("scores", values)
        trial.set_user_attr("mean", mean)
        per_example = {n: [float(x) for x in r.per_example] for n, r in results.items()}
        trial.storage.set_trial_system_attr(trial._trial_id, PER_EXAMPLE_ATTR, per_example)
        if self.objective == "pareto":
            return [values[s.name] for s in self.scorers]
        return mean

    def _examples(self, fraction: float) -> int:
        """Examples scored by a call with ``limit_fraction=fraction``, summed over tasks."""
        limits = self.engine.limits(None, fraction)
        return sum(min(int(limits[s.name] or s.num_examples), s.num_examples) for s in self.scorers)

    def _race(self, trial: optuna.Trial) -> dict | None:
        """Score the rungs of ``trial`` against the best complete trial; raise ``TrialPruned``
        when it cannot reach it. Returns the last rung's results (``None``: no reference yet)."""
        import optuna
        from optuna.trial import TrialState

        reference = reference_trial(
            trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), self.scorers
        )
        if reference is None:
            return None
        trial.set_user_attr("raced_against", reference.trial)
        partial = None
        for step, (rung, limits) in enumerate(self.rungs):
            partial = score_all(self.candidate_model, self.engine, rung, resume=partial)
            examples = sum(limits.values())
            trial.set_user_attr(EXAMPLES_ATTR, examples)
            value = macro_mean({n: r.value for n, r in partial.items()}, self.scorers)
            trial.report(value, step=step)
            state = race(
                {n: r.per_example for n, r in partial.items()},
                reference,
                self.scorers,
                self.racing.confidence,
            )
            if state is None:  # the reference holds fewer examples than this prefix
                logger.warning(
                    "trial %d: the per-example scores of trial %d do not pair with its own: not racing it",
                    trial.number,
                    reference.trial,
                )
                return partial
            if state.out:
                trial.set_user_attr(RACED_OUT_ATTR, rung)
                trial.set_user_attr("partial_mean", value)
                trial.set_user_attr("race_difference", state.difference)
                trial.set_user_attr("race_bound", state.bound)
                raise optuna.TrialPruned(
                    f"raced out after {examples} examples ({rung:g} of each split): even at "
                    f"{self.racing.confidence:g} confidence it stays {-state.bound:.3g} below trial "
                    f"{reference.trial} (estimated difference {state.difference:+.3g})"
                )
        return partial
