"""The Optuna study of a merge search: storage, sampler, configuration and baselines.

A study lives in an Optuna storage: by default the SQLite file ``study.db`` in the
output folder; ``postgresql://...`` (or any SQLAlchemy URL) or a journal file lets
several workers on several machines share it. ``trials`` counts every finished
(complete or pruned) trial of the study, the enqueued baselines included. How workers
share a study, and how the trials of dead workers are run again, is in
:mod:`hf_recycle._search.worker`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_recycle._search.baselines import (
    greedy_soup_max_trials,
    greedy_soup_step,
    single_weights,
    soup_weights,
    uniform_weights,
)
from hf_recycle._search.space import SearchSpace
from hf_recycle.errors import MissingDependencyError, SearchError

if TYPE_CHECKING:  # pragma: no cover
    import optuna

logger = logging.getLogger(__name__)

FINGERPRINT_ATTR = "hf_recycle"
DUPLICATE_ATTR = "duplicate_of"
MAX_RETRY = 3
DEFAULT_HEARTBEAT_S = 30
#: libpq settings under which a connection to a server that vanished fails instead of waiting forever.
POSTGRES_CONNECT_ARGS = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30000,
}


# --- storage ------------------------------------------------------------------------------


def default_storage_url(output_dir: str | Path) -> str:
    """``sqlite:///<output_dir>/study.db`` (absolute)."""
    return f"sqlite:///{(Path(output_dir) / 'study.db').resolve()}"


def redact_url(url: str) -> str:
    """The storage URL with any password replaced by ``***``."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    if ":" in creds:
        creds = creds.split(":", 1)[0] + ":***"
    return f"{scheme}://{creds}@{host}"


def open_storage(
    url: str, heartbeat_interval: int | None = DEFAULT_HEARTBEAT_S
) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``.

    ``sqlite:///...``, ``postgresql://...`` and other SQLAlchemy URLs give an RDB
    storage with heartbeats (stale trials are failed and retried); ``journal:PATH`` or
    a path ending in ``.log``/``.journal`` gives a journal file storage (no heartbeat:
    only trials of dead local processes are retried).

    Raises:
        MissingDependencyError: The database driver is not installed.
        SearchError: The URL is not understood or the database cannot be reached.
    """
    import optuna

    if url.startswith("journal:") or url.endswith((".log", ".journal")):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = url.removeprefix("journal:")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path))
    if "://" not in url:
        raise SearchError(
            f"storage '{url}' is not a database URL or journal file: use sqlite:///path/study.db, "
            "postgresql://user@host:port/db or journal:/path/study.log"
        )
    scheme = url.split("://", 1)[0]
    engine_kwargs: dict[str, Any] = {}
    if scheme.startswith("postgresql"):
        url = postgres_driver_url(url, scheme)
        engine_kwargs = {"pool_pre_ping": True, "connect_args": dict(POSTGRES_CONNECT_ARGS)}
    elif scheme.startswith("sqlite"):
        Path(url.split(":///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    kwargs: dict[str, Any] = {}
    if heartbeat_interval:
        kwargs = dict(
            heartbeat_interval=int(heartbeat_interval),
            grace_period=int(heartbeat_interval) * 3,
            heartbeat_stale_trial_callback=requeue,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
    except Exception as exc:  # sqlalchemy errors: unreachable server, bad credentials
        raise SearchError(f"cannot open storage '{redact_url(url)}': {exc}") from exc


def postgres_driver_url(url: str, scheme: str) -> str:
    """``url`` with an installed PostgreSQL driver named in its scheme.

    A bare ``postgresql://`` gets psycopg (v3) when it is installed, else psycopg2; a
    scheme that names its driver (``postgresql+psycopg2://``) must have that driver.
    """
    import importlib.util

    drivers = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary"}
    if "+" in scheme:
        driver = scheme.split("+", 1)[1]
        if driver in drivers and importlib.util.find_spec(driver) is None:
            raise MissingDependencyError(drivers[driver], f"storage '{redact_url(url)}'")
        return url
    for driver in drivers:
        if importlib.util.find_spec(driver) is not None:
            return f"{scheme}+{driver}://" + url.split("://", 1)[1]
    raise MissingDependencyError("psycopg[binary]", f"storage '{redact_url(url)}'")


# --- the study ----------------------------------------------------------------------------


@dataclass
class StudyConfig:
    """Everything that defines a study; its JSON form is stored in the study and checked on resume.

    Attributes:
        space: The search space.
        checkpoints: Pinned specs of the checkpoints, in order.
        tasks: Task names, in order.
        directions: Per task, whether higher is better.
        objective: ``mean`` or ``pareto``.
        method: Merge method and its fixed parameters.
        baselines: Which baselines run.
    """

    space: SearchSpace
    checkpoints: list[str]
    tasks: list[str]
    directions: list[bool]
    objective: str = "mean"
    method: dict[str, Any] = field(default_factory=lambda: {"method": "linear"})
    baselines: tuple[str, ...] = ("uniform", "best_single", "greedy_soup")

    def fingerprint(self) -> dict[str, Any]:
        """The JSON stored under the study's ``hf_recycle`` user attribute."""
        return {
            "space": self.space.describe(),
            "checkpoints": list(self.checkpoints),
            "tasks": list(self.tasks),
            "objective": self.objective,
            "merge": dict(self.method),
            "baselines": list(self.baselines),
        }

    @property
    def optuna_directions(self) -> list[str]:
        """``["maximize"]`` for ``mean``; one direction per task for ``pareto``."""
        if self.objective == "pareto":
            return ["maximize" if up else "minimize" for up in self.directions]
        return ["maximize"]

    @property
    def metric_names(self) -> list[str]:
        """Names of the study's objectives: ``["mean"]``, or each task for ``pareto``."""
        return list(self.tasks) if self.objective == "pareto" else ["mean"]

    def baseline_trials(self) -> int:
        """The most trials the baselines can take."""
        k = self.space.n_checkpoints
        with_uniform = "uniform" in self.baselines
        n = int(with_uniform)
        if "best_single" in self.baselines or "greedy_soup" in self.baselines:
            n += k
        if "greedy_soup" in self.baselines:
            n += greedy_soup_max_trials(k, with_uniform)
        return n


def create_or_load_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    config: StudyConfig,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Create study ``name`` (or load it when it exists) and check it was made for ``config``.

    Raises:
        SearchError: The stored study was made for other checkpoints, tasks or space.
    """
    import optuna

    study = optuna.create_study(
        storage=storage,
        study_name=name,
        directions=config.optuna_directions,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    stored = _upgraded(study.user_attrs.get(FINGERPRINT_ATTR))
    wanted = config.fingerprint()
    if stored is None:
        study.set_user_attr(FINGERPRINT_ATTR, wanted)
    if study.metric_names is None:  # optuna-dashboard shows these names
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(config.metric_names)
    elif stored != wanted:
        diff = sorted(k for k in wanted if stored.get(k) != wanted[k])
        hint = (
            " (it was made with the earlier simplex variables: set search.weights: simplex_box to resume it)"
            if (stored.get("space") or {}).get("weights") == "simplex_box"
            and wanted["space"].get("weights") == "simplex"
            else ""
        )
        raise SearchError(
            f"study '{name}' in this storage was made for a different search ({', '.join(diff)} differ){hint}: "
            "pass another --study NAME, or delete the old study (e.g. the study.db file) to start over"
        )
    return study


def _upgraded(stored: dict[str, Any] | None) -> dict[str, Any] | None:
    """A stored fingerprint in today's terms: a study made before ``simplex`` meant the K - 1
    stick-breaking variables (no ``variables`` key) used what is now ``simplex_box``."""
    space = (stored or {}).get("space")
    if not isinstance(space, dict) or space.get("weights") != "simplex" or "variables" in space:
        return stored
    return {**stored, "space": {**space, "weights": "simplex_box"}}  # type: ignore[dict-item]


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue ``trial`` (failed: its worker died) again, at most :data:`MAX_RETRY` times.

    The copy keeps the trial's stored parameters, its fixed parameters (a queued trial) and
    its user attributes; a sampled trial that died before it had any is not queued again:
    the sampler proposes a new trial in its slot.
    """
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    if not trial.params and not trial.system_attrs.get("fixed_params"):
        logger.info("trial %d died before it had parameters: its slot goes to a new trial", trial.number)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, trial)


# --- baselines as enqueued trials --------------------------------------------------------


def enqueue_initial_baselines(study: optuna.Study, config: StudyConfig) -> None:
    """Enqueue the uniform soup and every single checkpoint (once per study)."""
    if study.user_attrs.get("baselines_enqueued"):
        return
    k = config.space.n_checkpoints
    space = config.space
    if "uniform" in config.baselines:
        study.enqueue_trial(
            space.params_for(uniform_weights(k)), user_attrs={"baseline": "uniform"}, skip_if_exists=True
        )
    if "best_single" in config.baselines or "greedy_soup" in config.baselines:
        for i in range(k):
            study.enqueue_trial(
                space.params_for(single_weights(i, k)),
                user_attrs={"baseline": "single", "checkpoint": i},
                skip_if_exists=True,
            )
    study.set_user_attr("baselines_enqueued", True)


def baseline_members(
    trial: optuna.Trial | optuna.trial.FrozenTrial, n_checkpoints: int
) -> frozenset[int] | None:
    """The soup a baseline trial evaluated (``None`` for a searched trial)."""
    kind = trial.user_attrs.get("baseline")
    if kind == "uniform":
        return frozenset(range(n_checkpoints))
    if kind == "single":
        return frozenset([int(trial.user_attrs["checkpoint"])])
    if kind == "greedy_soup":
        return frozenset(int(i) for i in trial.user_attrs["members"])
    return None


def earlier_twin(trial: optuna.Trial, n_checkpoints: int) -> int | None:
    """The number of an earlier trial of the same baseline soup that did not fail, if any.

    Two workers that start on a new study together can both enqueue the initial baselines
    (and greedy soup's next step): the copy with the higher number is not run.
    """
    from optuna.trial import TrialState

    members = baseline_members(trial, n_checkpoints)
    if members is None:
        return None
    for t in trial.study.get_trials(deepcopy=False):
        if (
            t.number < trial.number
            and t.state != TrialState.FAIL
            and DUPLICATE_ATTR not in t.user_attrs
            and baseline_members(t, n_checkpoints) == members
        ):
            return t.number
    return None


def soup_scores(
    trials: Sequence[optuna.trial.FrozenTrial], n_checkpoints: int
) -> dict[frozenset[int], float]:
    """Search mean of every completed baseline soup, keyed by its members."""
    from optuna.trial import TrialState

    scores: dict[frozenset[int], float] = {}
    for t in trials:
        members = baseline_members(t, n_checkpoints)
        if members is not None and t.state == TrialState.COMPLETE and "mean" in t.user_attrs:
            scores.setdefault(members, float(t.user_attrs["mean"]))
    return scores


def single_scores(trials: Sequence[optuna.trial.FrozenTrial], n_checkpoints: int) -> list[float] | None:
    """Search mean of each single checkpoint, or ``None`` while some are missing."""
    scores = soup_scores(trials, n_checkpoints)
    singles = [scores.get(frozenset([i])) for i in range(n_checkpoints)]
    return None if any(s is None for s in singles) else [float(s) for s in singles]  # type: ignore[arg-type]


def enqueue_greedy_step(
    study: optuna.Study, config: StudyConfig, trials: Sequence[optuna.trial.FrozenTrial]
) -> bool:
    """Enqueue greedy soup's next soup when its inputs are known; ``True`` when one was enqueued."""
    from optuna.trial import TrialState

    if "greedy_soup" not in config.baselines:
        return False
    k = config.space.n_checkpoints
    singles = single_scores(trials, k)
    if singles is None:
        return False
    state = greedy_soup_step(singles, soup_scores(trials, k))
    if state.done:
        return False
    pending = {
        baseline_members(t, k)
        for t in trials
        if t.user_attrs.get("baseline") == "greedy_soup" and t.state != TrialState.FAIL
    }
    pending |= {baseline_members(t, k) for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)}
    if state.next_members in pending:
        return False
    study.enqueue_trial(
        config.space.params_for(soup_weights(state.next_members, k)),
        user_attrs={"baseline": "greedy_soup", "members": sorted(state.next_members)},
    )
    return True


# --- the worker loop ---------------------------------------------------------------------


def finished_count(trials: Sequence[optuna.trial.FrozenTrial]) -> int:
    """Trials that count toward the budget: complete and pruned ones (skipped duplicates aside)."""
    from optuna.trial import TrialState

    return sum(t.state == TrialState.COMPLETE for t in trials) + pruned_count(trials)


def pruned_count(trials: Sequence[optuna.trial.FrozenTrial]) -> int:
    """Trials the pruner stopped (baseline copies skipped as ``duplicate_of`` are not counted)."""
    from optuna.trial import TrialState

    return sum(t.state == TrialState.PRUNED and DUPLICATE_ATTR not in t.user_attrs for t in trials)
