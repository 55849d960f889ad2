"""A search worker: take the next trial of a shared study, run it, until the budget is spent.

Many workers (processes, hosts) may run one study. Two rules keep the study exact:

- **The budget.** ``trials`` counts finished trials (complete and pruned; baseline copies
  skipped as ``duplicate_of`` aside). A worker takes a trial only while finished plus running
  trials are fewer than ``trials``, and it checks and takes under the study's lock
  (:class:`StudyLock`: a file lock beside a SQLite database or journal file, an advisory
  lock on PostgreSQL), so no two workers take the last slot: the study ends with exactly
  ``trials`` finished trials. A worker that finds every slot taken by running trials waits
  for them, since a trial that dies is run again.
- **Ownership.** A trial carries its worker (host, pid, the process's start time: :mod:`hf_recycle.processes`) from the
  moment it is ``RUNNING``: under the lock the worker writes its name on the queued trial
  it is about to pop (or queues a new one with its name on it) and then pops it. A trial
  whose process died at any point, even before it had parameters, is therefore known as
  dead on this host: the next worker fails it and queues it again (:func:`requeue`); a trial
  of a dead process on another host is failed when its heartbeat goes stale (RDB storages).

A trial interrupted by Ctrl-C or SIGTERM is failed and queued again the same way, so that
an interrupted baseline still runs when the search resumes. A retried trial is well defined: it keeps the fixed parameters of a queued trial
(baselines, greedy soup's steps) or the parameters a sampled trial had stored; a sampled
trial that died before it had parameters is not queued again (the sampler proposes a new
one in its slot).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_recycle.errors import SearchError
from hf_recycle.processes import may_run, this_process
from hf_recycle.search.study import (
    StudyConfig,
    enqueue_greedy_step,
    enqueue_initial_baselines,
    finished_count,
    requeue,
)

if TYPE_CHECKING:  # pragma: no cover
    import optuna

logger = logging.getLogger(__name__)

WORKER_ATTR = "hf_recycle_worker"
POLL_S = 1.0

# --- who runs a trial ----------------------------------------------------------------------


def worker_identity() -> dict[str, Any]:
    """This process, as written on the trials it runs (:func:`hf_recycle.processes.this_process`)."""
    return this_process()


def owner_is_dead(owner: dict[str, Any] | None) -> bool:
    """Whether ``owner`` (a trial's :data:`WORKER_ATTR`) is surely a dead process of this host."""
    return bool(owner) and not may_run(owner)


# --- retrying the trials of dead workers ---------------------------------------------------


def reap_dead_local_trials(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials of dead processes of this host and queue them again (:func:`requeue`).

    Returns:
        The numbers of the trials failed.
    """
    import optuna
    from optuna.trial import TrialState

    failed: list[int] = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.system_attrs.get(WORKER_ATTR)
        if not owner_is_dead(owner):
            continue
        try:
            if not study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        failed.append(trial.number)
        logger.warning(
            "trial %d was left running by a dead process (pid %s): failed it, running its parameters again",
            trial.number,
            owner["pid"],
        )
        requeue(study, study._storage.get_trial(trial._trial_id))
    return failed


# --- the study lock ------------------------------------------------------------------------


class StudyLock:
    """The lock the workers of one study take to check the budget and take a trial.

    Use :meth:`for_storage`. Re-entrant in neither sense: one worker takes it, then releases it.
    """

    def acquire(self) -> None:
        """Block until this worker holds the lock."""

    def release(self) -> None:
        """Let the next worker in (a no-op when not held)."""

    @contextlib.contextmanager
    def held(self) -> Iterator[StudyLock]:
        self.acquire()
        try:
            yield self
        finally:
            self.release()

    @staticmethod
    def for_storage(url: str, study_name: str) -> StudyLock:
        """The lock for study ``study_name`` in storage ``url``.

        SQLite and journal files get a file lock beside them (``<file>.workers.lock``);
        PostgreSQL an advisory lock; other databases none (their workers may overrun the
        budget by one trial each when they finish together).
        """
        if url.startswith("journal:") or url.endswith((".log", ".journal")):
            return FileStudyLock(Path(url.removeprefix("journal:")).with_suffix(".workers.lock"))
        scheme = url.split("://", 1)[0]
        if scheme.startswith("sqlite") and ":///" in url:
            return FileStudyLock(Path(url.split(":///", 1)[1] + ".workers.lock"))
        if scheme.startswith("postgresql"):
            return PostgresStudyLock(url, study_name)
        logger.warning("storage %s has no worker lock: workers may overrun the trial budget", scheme)
        return StudyLock()


class FileStudyLock(StudyLock):
    """``flock`` on a file: released by the kernel when its process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


class PostgresStudyLock(StudyLock):
    """A session advisory lock keyed by the study name: released when its connection closes."""

    def __init__(self, url: str, study_name: str) -> None:
        from hf_recycle.search.study import postgres_driver_url

        self.url = postgres_driver_url(url, url.split("://", 1)[0])
        digest = hashlib.sha256(f"hf-recycle/{study_name}".encode()).digest()
        self.key = int.from_bytes(digest[:8], "big", signed=True)
        self._engine: Any = None
        self._conn: Any = None

    def acquire(self) -> None:
        import sqlalchemy

        if self._engine is None:
            self._engine = sqlalchemy.create_engine(self.url, poolclass=sqlalchemy.pool.NullPool)
        conn = self._engine.connect()
        try:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def release(self) -> None:
        import sqlalchemy

        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            finally:
                conn.close()


# --- the worker loop -----------------------------------------------------------------------


def _mark_next_trial(study: optuna.Study) -> None:
    """Write this worker on the trial ``study.ask()`` pops next (queue one when none waits)."""
    import optuna
    from optuna.trial import TrialState

    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if waiting:
        study._storage.set_trial_system_attr(waiting[0]._trial_id, WORKER_ATTR, worker_identity())
    else:
        study.add_trial(
            optuna.trial.create_trial(state=TrialState.WAITING, system_attrs={WORKER_ATTR: worker_identity()})
        )


def _fail_stale_remote_trials(study: optuna.Study) -> None:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def run_worker(
    study: optuna.Study,
    config: StudyConfig,
    objective: Callable[[optuna.Trial], float | Sequence[float]],
    trials: int,
    *,
    lock: StudyLock | None = None,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    wait: Callable[[], None] | None = None,
) -> None:
    """Run trials of ``study`` until it holds ``trials`` finished trials (see the module docstring).

    Baselines come first (queued), then greedy soup's steps as their inputs are known,
    then the sampler's candidates.

    Args:
        study: The study, with its sampler and pruner.
        config: What the study was made for.
        objective: Scores one trial.
        trials: Finished trials the study should hold.
        lock: The study's lock (:meth:`StudyLock.for_storage`); none for a private storage.
        on_trial: Called after each trial this worker runs.
        wait: Called while every remaining slot is taken by a running trial (default:
            sleep :data:`POLL_S` seconds).
    """
    from optuna.trial import TrialState

    if trials <= 0:
        raise SearchError(f"trials must be a positive number, got {trials}")
    lock = lock or StudyLock()
    wait = wait or (lambda: time.sleep(POLL_S))
    callbacks = [on_trial] if on_trial else []
    waiting_logged = False

    interrupted: list[int] = []

    def run(trial: optuna.Trial) -> float | Sequence[float]:
        lock.release()  # the trial is ours: let the next worker take one while this one runs
        try:
            return objective(trial)
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM: optuna fails the trial; it runs again later
            interrupted.append(trial._trial_id)
            raise

    while True:
        lock.acquire()
        try:
            reap_dead_local_trials(study)
            _fail_stale_remote_trials(study)
            current = study.get_trials(deepcopy=False)
            done = finished_count(current)
            if done >= trials:
                return
            running = sum(t.state == TrialState.RUNNING for t in current)
            if done + running < trials:
                enqueue_initial_baselines(study, config)
                enqueue_greedy_step(study, config, study.get_trials(deepcopy=False))
                _mark_next_trial(study)
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", UserWarning)  # heartbeat with ask-and-tell
                        study.optimize(run, n_trials=1, callbacks=callbacks, gc_after_trial=False)
                except KeyboardInterrupt:
                    for trial_id in interrupted:
                        requeue(study, study._storage.get_trial(trial_id))
                    raise
                waiting_logged = False
                continue
        finally:
            lock.release()
        if not waiting_logged:
            logger.info(
                "%d of %d trials finished, the rest are running in other workers: waiting", done, trials
            )
            waiting_logged = True
        wait()
