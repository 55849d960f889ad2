"""Workers sharing a study: the budget is exact, dead workers' trials are retried, the lock holds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from synthetic import (
    TargetMixtureScorer,  # noqa: F401 (the worker script imports it)
    WeightsModel,
)
from test_study import _Closeness

from hf_recycle._search.baselines import uniform_weights
from hf_recycle._search.objective import TrialObjective
from hf_recycle._search.space import SearchSpace
from hf_recycle._search.study import StudyConfig, create_or_load_study, finished_count
from hf_recycle._search.worker import (
    WORKER_ATTR,
    FileStudyLock,
    StudyLock,
    reap_dead_local_trials,
    run_worker,
)
from hf_recycle.processes import _proc_stat, this_process

HERE = Path(__file__).parent


def _study(baselines=(), objective="mean", tasks=("closeness",)):
    space = SearchSpace(3)
    config = StudyConfig(
        space=space,
        checkpoints=["a", "b", "c"],
        tasks=list(tasks),
        directions=[True] * len(tasks),
        baselines=baselines,
        objective=objective,
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = create_or_load_study(
        optuna.storages.InMemoryStorage(), "s", config, sampler=optuna.samplers.RandomSampler(seed=0)
    )
    return study, config, space


def _identity(pid: int) -> dict:
    return {**this_process(), "pid": pid, "start_time": _proc_stat(pid)[1] if _proc_stat(pid) else None}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_worker_waits_for_running_trials_instead_of_overrunning_the_budget():
    study, config, space = _study()
    for value in (-1.0, -2.0):
        study.add_trial(optuna.trial.create_trial(value=value))
    other = study.ask()  # the last slot, taken by a live worker (our parent process)
    study._storage.set_trial_system_attr(other._trial_id, WORKER_ATTR, _identity(os.getppid()))
    scorer = _Closeness()
    waits = []

    def wait():  # the other worker finishes its trial while this one waits
        waits.append(len(study.get_trials(deepcopy=False)))
        study.tell(other, -3.0)

    run_worker(study, config, TrialObjective(space, WeightsModel(), [scorer]), trials=3, wait=wait)
    assert waits == [3] and scorer.calls == 0
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 3 == finished_count(trials)


def test_trials_of_dead_workers_are_failed_and_retried_as_defined():
    study, config, space = _study()
    queued = space.params_for(uniform_weights(3))
    study.enqueue_trial(queued, user_attrs={"baseline": "uniform"})
    popped = study.ask()  # a queued trial, killed before it asked for its parameters
    sampled = study.ask()  # a sampled trial, killed before it had any
    with_params = study.ask()  # a sampled trial killed mid-scoring
    sampled_params = space.suggest(with_params)
    dead = _identity(_dead_pid())
    for trial in (popped, sampled, with_params):
        study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, dead)
    alive = study.ask()  # and one of a live worker of this host, left alone
    study._storage.set_trial_system_attr(alive._trial_id, WORKER_ATTR, _identity(os.getppid()))

    assert sorted(reap_dead_local_trials(study)) == [0, 1, 2]
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials[:4]] == [TrialState.FAIL] * 3 + [TrialState.RUNNING]
    retries = {t.system_attrs["failed_trial"]: t for t in trials[4:]}
    assert sorted(retries) == [0, 2]  # the sampled trial without parameters leaves its slot to a new one
    assert retries[0].state == TrialState.WAITING and retries[0].system_attrs["fixed_params"] == queued
    assert retries[0].user_attrs == {"baseline": "uniform"}
    assert retries[2].params == with_params.params
    np.testing.assert_allclose(space.candidate(retries[2].params).weights, sampled_params.weights)
    assert reap_dead_local_trials(study) == []  # once


def test_a_pid_reused_by_another_process_does_not_keep_a_trial_alive():
    study, _, _ = _study()
    trial = study.ask()
    me = _identity(os.getpid())
    study._storage.set_trial_system_attr(
        trial._trial_id, WORKER_ATTR, {**me, "start_time": me["start_time"] - 1}
    )
    assert reap_dead_local_trials(study) == [0]


def test_metric_names_and_weights_are_stored_for_the_dashboard():
    study, config, space = _study()
    run_worker(study, config, TrialObjective(space, WeightsModel(), [_Closeness()]), trials=3)
    assert study.metric_names == ["mean"]
    for t in study.get_trials(deepcopy=False):
        weights = t.user_attrs["weights"][0]
        assert {k: v for k, v in t.user_attrs.items() if k.startswith("weight:")} == {
            f"weight:w{k:03d}": weights[k] for k in range(3)
        }
        assert all(isinstance(v, float) for v in weights) and abs(sum(weights) - 1) < 1e-9
    pareto, _, _ = _study(objective="pareto", tasks=("sums", "copy"))
    assert pareto.metric_names == ["sums", "copy"]


_HOLD = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    print("busy", flush=True)
    sys.exit(0)
print("held", flush=True)
sys.stdin.read()
"""


def test_the_file_lock_excludes_other_processes_and_dies_with_its_holder(tmp_path):
    lock = StudyLock.for_storage(f"sqlite:///{tmp_path}/study.db", "s")
    assert isinstance(lock, FileStudyLock) and lock.path == tmp_path / "study.db.workers.lock"
    probe = [sys.executable, "-c", _HOLD, str(lock.path)]
    with lock.held():
        assert (
            subprocess.run(probe, capture_output=True, text=True, stdin=subprocess.DEVNULL).stdout == "busy\n"
        )
    holder = subprocess.Popen(probe, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with lock.held():  # the kernel released the dead holder's lock
        pass
    journal = StudyLock.for_storage(f"journal:{tmp_path}/study.log", "s")
    assert journal.path == tmp_path / "study.workers.lock"


_POOL_WORKER = """
import sys
sys.path.insert(0, {here!r})
from synthetic import TargetMixtureScorer
from hf_recycle.recipe import Recipe
from hf_recycle._search.api import search
ckpts = {ckpts!r}
recipe = Recipe.model_validate({{"name": "t", "checkpoints": ckpts,
    "search": {{"trials": {trials}, "sampler": "random", "storage": {storage!r}}}, "output": {{"dir": sys.argv[1]}}}})
search(recipe, scorers=[TargetMixtureScorer("mix", ckpts, [0.6, 0.3, 0.1])], progress=False)
"""


@pytest.mark.slow  # 2-3 worker processes, each a real search
@pytest.mark.parametrize(
    "workers,kind", [(2, "sqlite"), (3, "sqlite"), (3, "journal")], ids=["2-sqlite", "3-sqlite", "3-journal"]
)
def test_workers_on_one_study_finish_exactly_the_budget(llama_pool, tmp_path, workers, kind):
    _, ckpts = llama_pool
    storage = f"sqlite:///{tmp_path}/study.db" if kind == "sqlite" else f"journal:{tmp_path}/study.log"
    n = 10
    script = tmp_path / "worker.py"
    script.write_text(
        _POOL_WORKER.format(here=str(HERE), ckpts=[str(p) for p in ckpts], trials=n, storage=storage)
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / f"w{i}")], env=env, stderr=subprocess.PIPE
        )
        for i in range(workers)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-3000:]
    trials = optuna.load_study(study_name="t", storage=_storage(storage)).get_trials(deepcopy=False)
    assert finished_count(trials) == n
    assert sum(t.state == TrialState.COMPLETE for t in trials) == n
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    baselines = sorted(
        (t.user_attrs["baseline"], t.user_attrs.get("checkpoint", -1))
        for t in trials
        if t.state == TrialState.COMPLETE and t.user_attrs.get("baseline") in ("uniform", "single")
    )
    assert baselines == [("single", 0), ("single", 1), ("single", 2), ("uniform", -1)]


def _storage(url):
    from hf_recycle._search.study import open_storage

    return open_storage(url, None)


@pytest.mark.postgres
def test_the_postgres_lock_excludes_other_sessions():
    url = os.environ.get("HF_RECYCLE_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("HF_RECYCLE_TEST_POSTGRES_URL is not set: no PostgreSQL server to lock on")
    import sqlalchemy

    lock = StudyLock.for_storage(url, "locked-study")
    other = sqlalchemy.create_engine(lock.url, poolclass=sqlalchemy.pool.NullPool)
    probe = sqlalchemy.text("SELECT pg_try_advisory_lock(:k)")
    with other.connect() as conn:
        with lock.held():
            assert conn.execute(probe, {"k": lock.key}).scalar() is False
        assert conn.execute(probe, {"k": lock.key}).scalar() is True
        conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": lock.key})
    assert StudyLock.for_storage(url, "another-study").key != lock.key


def test_an_interrupted_trial_runs_again_when_the_search_resumes():
    """Ctrl-C or SIGTERM (a KeyboardInterrupt) during the uniform baseline: optuna fails the
    trial, and it is queued again with its weights, so the resumed search still runs it."""
    study, config, space = _study(baselines=("uniform",))

    class Interrupting(_Closeness):
        def score(self, model, limit=None, *, resume=None):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_worker(study, config, TrialObjective(space, WeightsModel(), [Interrupting()]), trials=3)
    failed, queued = study.get_trials(deepcopy=False)
    assert failed.state == TrialState.FAIL and queued.state == TrialState.WAITING
    assert queued.system_attrs["failed_trial"] == 0 and queued.user_attrs["baseline"] == "uniform"
    assert queued.params == failed.params == space.params_for(uniform_weights(3))
    run_worker(study, config, TrialObjective(space, WeightsModel(), [_Closeness()]), trials=3)
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    assert len(done) == 3 and done[0].number == 1 and done[0].user_attrs["baseline"] == "uniform"
