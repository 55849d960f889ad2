"""Where CMA-ES starts: the best finished trial it did not propose itself.

The baselines (uniform soup, single checkpoints, greedy soup) are enqueued trials of the
same study and run before any sampled trial. Their parameters are those of the search space
(:meth:`~hf_recycle._search.space.SearchSpace.params_for` maps each one exactly), so the best of
them is a point CMA-ES can start from as it is. TPE and GP need nothing of this: they model
every finished trial, the enqueued ones included (``tests/search/test_warm_start.py``).

This module imports optuna; the registry (``__init__``) never imports it.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.samplers import CmaEsSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

#: CMA-ES's initial step size once it starts from a finished trial, in Optuna's normalized
#: coordinates (every parameter's range scaled to [0, 1]); the same as Optuna's default for a
#: start at the centre (range / 6). From a corner of the ``simplex`` parameterization (a single
#: checkpoint), the first generation gives the best checkpoint about 0.65 of the weight on
#: average and another checkpoint the majority in 5% (K = 4) to 20% (K = 9) of its samples:
#: the stick-breaking map is steep at the corners, so the other corners are within reach.
#: A step of 1/3 (three steps span the range) reaches about as far (15%) and did worse on
#: ``benchmarks/search_parameterization.py``: higher regret on the mixture and face objectives,
#: more trials below half the best baseline on the poisoned ones (RESULTS.md, issue 17).
START_SIGMA0 = 1.0 / 6.0
#: System attribute of the trial that chose the start (its value: the start's parameters).
START_ATTR = "hf_recycle:cma_start"


def best_foreign_trial(study: optuna.Study, names: Any, own_attr: str | None = None) -> FrozenTrial | None:
    """The best complete trial of ``study`` that has every parameter in ``names``.

    Args:
        study: A single-objective study.
        names: Parameter names the start must give a value to.
        own_attr: A system attribute that marks the trials the sampler proposed itself
            (left out, so that the start stays put while the sampler's own trials finish).

    Returns:
        The trial, or ``None`` when no trial qualifies (then CMA-ES starts where Optuna's does).
    """
    names = list(names)
    best: FrozenTrial | None = None
    maximize = study.direction == StudyDirection.MAXIMIZE
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.value is None or (own_attr is not None and own_attr in t.system_attrs):
            continue
        if any(name not in t.params for name in names):
            continue
        if best is None or (t.value > best.value if maximize else t.value < best.value):  # type: ignore[operator]
            best = t
    return best


class BaselineStartCmaEsSampler(CmaEsSampler):
    """Optuna's CMA-ES whose mean starts at the best finished trial it did not propose.

    On a new study the baselines run first, so CMA-ES starts at the best of them with step
    size :data:`START_SIGMA0`; when no trial has finished (a study without baselines) it
    starts where Optuna's CMA-ES does (the centre of the box).

    The start is chosen once per study: the first trial CMA-ES samples stores it under the
    system attribute :data:`START_ATTR`, and every later sample of the first generation (in
    this process, in other workers sharing the storage, after a resume) reads it from the
    earliest trial that holds it. So the whole first generation is drawn around one mean,
    even when a baseline (greedy soup's last steps, run by another worker) finishes better
    meanwhile. From the second generation on, CMA-ES restores its own state from the study
    and the start no longer matters.

    Optuna reads the start from its (deprecated, still honoured) ``x0`` and ``sigma0``
    settings when it builds the optimizer; they are set here, before each relative sample.
    ``tests/search/test_warm_start.py`` checks that Optuna honours them.
    """

    #: The initial step size from a finished trial (a subclass may change it).
    start_sigma0: float = START_SIGMA0

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]
    ) -> dict[str, Any]:
        self._raise_error_if_multi_objective(study)
        if search_space:
            start = self._start(study, trial, search_space)
            self._x0 = start
            self._sigma0 = None if start is None else self.start_sigma0
        return super().sample_relative(study, trial, search_space)

    def _start(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]
    ) -> dict[str, float] | None:
        """The study's stored start, else the best foreign trial's parameters (then stored on ``trial``)."""
        pinned = [t for t in study.get_trials(deepcopy=False) if START_ATTR in t.system_attrs]
        if pinned:
            start = min(pinned, key=lambda t: t.number).system_attrs[START_ATTR]
            if set(start) == set(search_space):
                return dict(start)
        best = best_foreign_trial(study, search_space, own_attr=self._attr_key_generation)
        if best is None:
            return None
        start = {name: float(best.params[name]) for name in search_space}
        study._storage.set_trial_system_attr(trial._trial_id, START_ATTR, start)
        return start
