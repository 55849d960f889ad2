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

A worker whose storage stops answering (its database server was killed, froze, or left the
network) stops within the storage's heartbeat grace period with a :class:`SearchError` that
names the storage (password hidden), in a trial or not (:class:`StorageWatch`); no thread of
it waits on the storage without a time limit, so Ctrl-C and SIGTERM always end it.

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
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_recycle._search.study import (
    POSTGRES_CONNECT_ARGS,
    StudyConfig,
    enqueue_greedy_step,
    enqueue_initial_baselines,
    finished_count,
    requeue,
)
from hf_recycle.errors import SearchError
from hf_recycle.processes import may_run, this_process

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


def shut_down_socket(dbapi_connection: Any) -> None:
    """Shut down the socket of a psycopg or psycopg2 connection (from any thread).

    A query that waits on it, even inside the driver's C code, ends at once with the
    driver's "server closed the connection" error; the connection is unusable after.
    """
    import socket

    pgconn = getattr(dbapi_connection, "pgconn", None)  # psycopg 3
    fd = pgconn.socket if pgconn is not None else dbapi_connection.fileno()  # psycopg2
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.close()


# --- the study lock ------------------------------------------------------------------------


class StudyLock:
    """The lock the workers of one study take to check the budget and take a trial.

    Use :meth:`for_storage`. Re-entrant in neither sense: one worker takes it, then releases it.
    """

    def acquire(self) -> None:
        """Block until this worker holds the lock."""

    def release(self) -> None:
        """Let the next worker in (a no-op when not held)."""

    def abandon(self) -> None:
        """Let go of the lock without waiting on its storage (a worker that stops on an error).

        The default releases it; a database lock drops its connection instead, which frees the
        lock on the server and cannot hang on a server that stopped answering.
        """
        self.release()

    def cut(self) -> None:
        """Called from another thread when the storage stopped answering: make a wait for the
        lock fail now (a database lock shuts its connection's socket down)."""

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
    """A session advisory lock keyed by the study name: released when its connection closes.

    Its connection has the storage's time limits
    (:data:`~hf_recycle._search.study.POSTGRES_CONNECT_ARGS`), so that :meth:`acquire` fails
    instead of waiting forever on a server that vanished from the network.
    """

    def __init__(self, url: str, study_name: str) -> None:
        from hf_recycle._search.study import postgres_driver_url

        self.url = postgres_driver_url(url, url.split("://", 1)[0])
        digest = hashlib.sha256(f"hf-recycle/{study_name}".encode()).digest()
        self.key = int.from_bytes(digest[:8], "big", signed=True)
        self._engine: Any = None
        self._conn: Any = None

    def acquire(self) -> None:
        import sqlalchemy

        if self._engine is None:
            self._engine = sqlalchemy.create_engine(
                self.url,
                poolclass=sqlalchemy.pool.NullPool,
                connect_args=dict(POSTGRES_CONNECT_ARGS),
            )
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
            except BaseException:
                conn.invalidate()  # the session ends, and the server frees its lock with it
                raise
            finally:
                conn.close()

    def cut(self) -> None:
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):  # it closed meanwhile
                shut_down_socket(conn.connection.dbapi_connection)

    def abandon(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.invalidate()  # closes the socket without a round trip; the server frees the lock
            conn.close()


# --- watching the storage ------------------------------------------------------------------


class _StorageLost(BaseException):
    """Raised in a worker's thread by :class:`StorageWatch` (a ``BaseException``, like Ctrl-C,
    so that no ``except Exception`` in a scorer or a library swallows it)."""


def _raise_in_thread(thread_id: int, exc_type: type[BaseException] | None) -> None:
    """Raise ``exc_type`` in thread ``thread_id`` at its next Python instruction (``None``
    takes back one not raised yet)."""
    import ctypes

    exc = ctypes.py_object(exc_type) if exc_type is not None else None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), exc)


def storage_description(storage: Any) -> str:
    """The URL of an RDB storage with any password hidden, else the storage's class name."""
    from hf_recycle._search.study import redact_url

    url = getattr(getattr(storage, "_backend", storage), "url", None)
    return redact_url(str(url)) if url else type(storage).__name__


class StorageWatch:
    """Keeps a worker's heartbeat and stops the worker when its storage stops answering.

    A daemon thread writes the heartbeat of the trial the worker runs (between trials it reads
    the study's id) every ``interval`` seconds. When no write or read succeeded for ``limit``
    seconds (the storage's grace period: by then other workers count the running trial as
    dead), a second daemon thread stops the worker's thread wherever it is: it raises
    :class:`_StorageLost` there (a trial, Python code) and shuts down the sockets of the
    storage's connections and of the study lock's (a query waiting in the driver's C code on
    a server that no longer answers). Neither thread is ever joined without a time limit, so
    a hung storage cannot keep the worker (or the interpreter's exit) waiting.
    """

    def __init__(
        self, storage: Any, study_name: str, interval: float, limit: float, lock: StudyLock | None = None
    ) -> None:
        self.storage = storage
        self.study_name = study_name
        self.interval = interval
        self.limit = limit
        self.lock = lock or StudyLock()
        self.trial_id: int | None = None
        self.last_ok = time.monotonic()
        self.error: BaseException | None = None
        self.lost = False
        engine = getattr(getattr(storage, "_backend", storage), "engine", None)
        # the connections whose sockets a lost server's waits are cut on (a server over the network)
        self._engine = (
            engine if getattr(getattr(engine, "dialect", None), "name", "") == "postgresql" else None
        )
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self._target = threading.get_ident()
        self._active = False
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._probe, name="hf-recycle-heartbeat", daemon=True),
            threading.Thread(target=self._watch, name="hf-recycle-storage-watch", daemon=True),
        ]

    @classmethod
    def for_study(cls, study: optuna.Study, lock: StudyLock | None = None) -> StorageWatch | None:
        """The watch for a storage with heartbeats (RDB storages); ``None`` for others."""
        from optuna.storages._heartbeat import is_heartbeat_enabled

        storage = study._storage
        if not is_heartbeat_enabled(storage):
            return None
        interval = float(storage.get_heartbeat_interval())
        grace = getattr(getattr(storage, "_backend", storage), "grace_period", None)
        return cls(storage, study.study_name, interval, float(grace or 2 * interval), lock)

    def start(self) -> None:
        if self._engine is not None:
            import sqlalchemy

            sqlalchemy.event.listen(self._engine, "connect", self._track)
            self._engine.dispose()  # its pooled connections reconnect, and are tracked
        self._active = True
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop both threads; a :class:`_StorageLost` not raised yet in the worker is taken back."""
        with self._guard:
            self._active = False
            if self.lost:
                _raise_in_thread(self._target, None)
        self._stop.set()
        if self._engine is not None:
            import sqlalchemy

            with contextlib.suppress(sqlalchemy.exc.InvalidRequestError):  # removed before
                sqlalchemy.event.remove(self._engine, "connect", self._track)

    def _track(self, dbapi_connection: Any, record: Any) -> None:
        self._connections.add(dbapi_connection)

    def _cut(self) -> None:
        """Make every wait on the storage's server fail now."""
        _raise_in_thread(self._target, _StorageLost)
        for connection in list(self._connections):
            with contextlib.suppress(Exception):  # closed meanwhile
                shut_down_socket(connection)
        self.lock.cut()

    def beat(self) -> None:
        """One heartbeat (or read) now; a failure is kept for the error message."""
        trial_id = self.trial_id
        try:
            if trial_id is not None:
                self.storage.record_heartbeat(trial_id)
            else:
                self.storage.get_study_id_from_name(self.study_name)
        except Exception as exc:  # the server is down: the watch decides when that is final
            self.error = exc
            logger.debug("storage %s did not answer: %s", storage_description(self.storage), exc)
        else:
            self.error = None
            self.last_ok = time.monotonic()

    def _probe(self) -> None:
        while not self._stop.is_set():
            self.beat()
            self._stop.wait(self.interval)

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.limit / 4)):
            if time.monotonic() - self.last_ok <= self.limit:
                continue
            with self._guard:
                if not self._active:
                    return
                self.lost = True
                # again after each limit: cleanup code may wait on the dead server once more
                self.last_ok = time.monotonic()
                self._cut()

    def lost_error(self) -> SearchError:
        """The error a worker stops with when its storage stopped answering."""
        reason = f"last error: {_connection_error_text(self.error)}" if self.error else "no answer"
        return SearchError(
            f"the study's storage '{storage_description(self.storage)}' did not answer for "
            f"{self.limit:.0f} s ({reason}); this worker stopped. The study keeps every finished "
            "trial, and the trial that was running runs again when the search resumes: start "
            "the database server again (or restore the network to it), then run the same "
            "command to resume"
        )


def _connection_error_text(exc: BaseException) -> str:
    """The first line of the driver's error behind ``exc`` (not optuna's wrapper of it)."""
    cause = storage_unreachable(exc) or exc
    return _first_line(getattr(cause, "orig", None) or cause)


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def storage_unreachable(exc: BaseException) -> BaseException | None:
    """The connection error to a database server behind ``exc`` (its cause chain), if any."""
    import sqlalchemy.exc

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError) or (
            isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated
        ):
            return current
        current = current.__cause__ or current.__context__
    return None


def _unreachable_error(study: optuna.Study, cause: BaseException) -> SearchError:
    return SearchError(
        f"the study's storage '{storage_description(study._storage)}' cannot be reached "
        f"({_connection_error_text(cause)}); this worker stopped. The study keeps every finished trial, and "
        "a trial that was running runs again when the search resumes: start the database server "
        "again (or check the URL and the network to it), then run the same command to resume"
    )


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


def _run_trial(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float | Sequence[float]],
    lock: StudyLock,
    watch: StorageWatch | None,
) -> optuna.trial.FrozenTrial:
    """Take the next trial (under ``lock``, which it releases once the trial is ours), run it, tell it.

    The trial's heartbeat is written by ``watch`` (not by a thread of ``study.optimize``, which
    waits for its heartbeat thread without a time limit). An objective that raises fails the
    trial and the error goes on; Ctrl-C or SIGTERM fails it and queues it again.
    """
    import optuna
    from optuna.trial import TrialState

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # optuna: heartbeat with ask-and-tell
        trial = study.ask()
    if watch is not None:
        watch.trial_id = trial._trial_id
        watch.beat()
    lock.release()  # the trial is ours: let the next worker take one while this one runs
    values: float | Sequence[float] | None = None
    try:
        values = objective(trial)
    except optuna.TrialPruned as exc:
        study.tell(trial, state=TrialState.PRUNED)
        logger.info("trial %d pruned: %s", trial.number, exc)
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM: fail the trial; it runs again later
        try:
            study.tell(trial, state=TrialState.FAIL)
            requeue(study, study._storage.get_trial(trial._trial_id))
        except Exception as exc:  # the stop wins; a dead worker's trial is run again anyway
            if storage_unreachable(exc) is None:
                raise
            logger.warning(
                "trial %d stays running in the study: its storage cannot be reached (%s); "
                "it runs again when the search resumes",
                trial.number,
                _connection_error_text(exc),
            )
        raise
    except Exception as exc:
        if storage_unreachable(exc) is None:  # the storage is gone: no trial to tell it about
            study.tell(trial, state=TrialState.FAIL)
            logger.warning("trial %d failed: %r", trial.number, exc)
        raise
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # an invalid value: the trial fails
            study.tell(trial, values)
    finally:
        if watch is not None:
            watch.trial_id = None
    frozen = study._storage.get_trial(trial._trial_id)
    if frozen.state == TrialState.FAIL:
        logger.warning("trial %d failed: its objective returned %r", trial.number, values)
    return frozen


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

    A storage with heartbeats (RDB) is watched (:class:`StorageWatch`): when its server stops
    answering, the worker stops within the storage's grace period, in a trial or not.

    Args:
        study: The study, with its sampler and pruner.
        config: What the study was made for.
        objective: Scores one trial.
        trials: Finished trials the study should hold.
        lock: The study's lock (:meth:`StudyLock.for_storage`); none for a private storage.
        on_trial: Called after each trial this worker runs.
        wait: Called while every remaining slot is taken by a running trial (default:
            sleep :data:`POLL_S` seconds).

    Raises:
        SearchError: The storage's database server cannot be reached or stopped answering
            (the message names the storage, its password hidden, and what to do).
    """
    if trials <= 0:
        raise SearchError(f"trials must be a positive number, got {trials}")
    lock = lock or StudyLock()
    watch = StorageWatch.for_study(study, lock)
    try:
        try:
            if watch is not None:
                watch.start()
            _run_until_done(study, config, objective, trials, lock, on_trial, wait or _sleep, watch)
        finally:
            if watch is not None:
                watch.stop()
    except _StorageLost as lost:
        assert watch is not None
        watch.stop()  # again: the exception may have cut the first stop short
        lock.abandon()
        interrupt = _interrupt_behind(lost)
        if interrupt is not None:  # it stopped the cleanup of Ctrl-C or SIGTERM: that stop wins
            raise interrupt from None
        raise watch.lost_error() from watch.error
    except KeyboardInterrupt:
        lock.abandon()
        raise
    except Exception as exc:
        lock.abandon()
        cause = storage_unreachable(exc)
        if cause is None:
            raise
        raise _unreachable_error(study, cause) from exc
    except BaseException:
        lock.abandon()
        raise


def _sleep() -> None:
    time.sleep(POLL_S)


def _interrupt_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM whose handling ``exc`` interrupted, if any."""
    current = exc.__context__
    while current is not None:
        if isinstance(current, KeyboardInterrupt):
            return current
        current = current.__context__
    return None


def _run_until_done(
    study: optuna.Study,
    config: StudyConfig,
    objective: Callable[[optuna.Trial], float | Sequence[float]],
    trials: int,
    lock: StudyLock,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None,
    wait: Callable[[], None],
    watch: StorageWatch | None,
) -> None:
    from optuna.trial import TrialState

    waiting_logged = False
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
                frozen = _run_trial(study, objective, lock, watch)
                if on_trial is not None:
                    on_trial(study, frozen)
                waiting_logged = False
                continue
        except BaseException:
            lock.abandon()  # no round trip to a storage that may be gone
            raise
        finally:
            lock.release()
        if not waiting_logged:
            logger.info(
                "%d of %d trials finished, the rest are running in other workers: waiting", done, trials
            )
            waiting_logged = True
        wait()
