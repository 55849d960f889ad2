"""A worker whose PostgreSQL study database vanishes stops with a clear error, and stops on SIGTERM.

Each test starts its own throwaway server (``.ci/postgres.sh``), since it kills or freezes it.
The workers are subprocesses with the CLI's SIGTERM handling, a heartbeat every second (grace
period 3 s) and an objective that never ends on its own, so only the storage watch or a
signal can stop them; every wait of the test is bounded.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import hf_recycle

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_ROOT = Path(hf_recycle.__file__).resolve().parents[1]  # the hf_recycle the workers import
PASSWORD = "s3cret-never-printed"
BOUND_S = 60  # far above the 3 s grace period; a worker that hangs fails the test here

_WORKER = """
import logging, sys, time
import optuna
from hf_recycle.cli import Terminated, _format_error, _sigterm_raises
from hf_recycle.errors import HfRecycleError
from hf_recycle._search.space import SearchSpace
from hf_recycle._search.study import StudyConfig, create_or_load_study, open_storage
from hf_recycle._search.worker import StudyLock, run_worker

url, name, trials = sys.argv[1], sys.argv[2], int(sys.argv[3])
space = SearchSpace(3)
config = StudyConfig(space=space, checkpoints=["a", "b", "c"], tasks=["t"], directions=[True], baselines=())
optuna.logging.set_verbosity(optuna.logging.WARNING)
logging.getLogger("hf_recycle").addHandler(logging.StreamHandler())  # "waiting", warnings
logging.getLogger("hf_recycle").setLevel(logging.INFO)

def objective(trial):  # a trial that runs until something stops it
    space.suggest(trial)
    print("scoring", trial.number, flush=True)
    while True:
        time.sleep(0.01)

with _sigterm_raises():
    try:
        lock = StudyLock.for_storage(url, name)
        with lock.held():
            study = create_or_load_study(open_storage(url, 1), name, config, optuna.samplers.RandomSampler())
        print("ready", flush=True)
        run_worker(study, config, objective, trials, lock=lock)
    except Terminated:
        print("terminated", flush=True)
        sys.exit(143)
    except HfRecycleError as exc:
        print(_format_error(exc), flush=True)
        sys.exit(1)
"""


class _Server:
    """A PostgreSQL server of this test: its URL (with a password trust auth ignores) and processes."""

    def __init__(self) -> None:
        # not under pytest's tmp_path: the postgres user must reach its folder
        self.dir = Path(tempfile.mkdtemp(prefix="hf-recycle-test-pg."))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        started = subprocess.run(
            ["bash", str(ROOT / ".ci/postgres.sh"), "start", str(self.dir), str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert started.returncode == 0, started.stderr
        self.url = started.stdout.strip().replace("postgres@", f"postgres:{PASSWORD}@")
        self.shown = f"postgresql+psycopg://postgres:***@127.0.0.1:{port}/postgres"

    def pids(self) -> list[int]:
        """The postmaster and its children."""
        postmaster = int((self.dir / "data" / "postmaster.pid").read_text().split()[0])
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                    children.append(int(stat.parent.name))
        return [postmaster, *children]

    def signal(self, signum: int) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.signal(signal.SIGCONT)
        subprocess.run(["bash", str(ROOT / ".ci/postgres.sh"), "stop", str(self.dir)], timeout=120)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def server():
    if not os.environ.get("HF_RECYCLE_TEST_POSTGRES_URL"):
        pytest.skip("HF_RECYCLE_TEST_POSTGRES_URL is not set: no PostgreSQL for these tests")
    if os.geteuid() != 0:
        pytest.skip("starting a throwaway PostgreSQL server needs root (.ci/postgres.sh)")
    pg = _Server()
    yield pg
    pg.stop()


class _Worker:
    def __init__(self, tmp_path: Path, url: str, trials: int = 1000) -> None:
        script = tmp_path / "worker.py"
        script.write_text(_WORKER)
        env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, str(script), url, "s", str(trials)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.out: list[str] = []
        self.err: list[str] = []

    def expect(self, stream: str, text: str) -> None:
        """Read ``stream`` until a line holds ``text`` (the worker reached that state)."""
        pipe, seen = (self.proc.stdout, self.out) if stream == "out" else (self.proc.stderr, self.err)
        deadline = time.monotonic() + BOUND_S
        while time.monotonic() < deadline:
            if select.select([pipe], [], [], deadline - time.monotonic())[0]:
                line = pipe.readline()
                if not line:
                    break
                seen.append(line)
                if text in line:
                    return
        self.proc.kill()
        rest_out, rest_err = self.proc.communicate()
        pytest.fail(
            f"the worker never printed {text!r}:\n{''.join(self.out) + rest_out}\n{''.join(self.err) + rest_err}"
        )

    def finish(self) -> tuple[int, str, float]:
        """Exit status, everything printed, and seconds taken: fails the test if it hangs."""
        start = time.monotonic()
        try:
            out, err = self.proc.communicate(timeout=BOUND_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            pytest.fail(
                f"the worker did not stop within {BOUND_S} s:\n{''.join(self.out) + out}\n{''.join(self.err) + err}"
            )
        return (
            self.proc.returncode,
            "".join(self.out) + out + "".join(self.err) + err,
            time.monotonic() - start,
        )


def _assert_clear_error(printed: str, server: _Server, *what: str) -> None:
    assert PASSWORD not in printed
    assert sum(line.startswith("error:") for line in printed.splitlines()) == 1, printed
    error = " ".join(printed[printed.index("error:") :].split())  # the CLI wraps it at 100 columns
    assert any(f"the study's storage '{server.shown}' {w}" in error for w in what), error
    assert "start the database server again" in error and "run the same command to resume" in error


def test_a_worker_whose_server_is_killed_mid_trial_stops_with_a_clear_error(server, tmp_path):
    worker = _Worker(tmp_path, server.url)
    worker.expect("out", "scoring 0")
    server.signal(signal.SIGKILL)
    status, printed, _ = worker.finish()
    assert status == 1, printed
    _assert_clear_error(printed, server, "did not answer for 3 s")
    assert "Connection refused" in printed or "server closed the connection" in printed


def test_a_worker_whose_server_stops_answering_mid_trial_stops_with_a_clear_error(server, tmp_path):
    worker = _Worker(tmp_path, server.url)
    worker.expect("out", "scoring 0")
    server.signal(signal.SIGSTOP)  # the server keeps its sockets open and never answers
    status, printed, _ = worker.finish()
    assert status == 1, printed
    _assert_clear_error(printed, server, "did not answer for 3 s")


def test_sigterm_stops_a_trial_whose_server_stopped_answering(server, tmp_path):
    """SIGTERM fails the trial in the storage; that write waits on the frozen server until the
    watch cuts it off, then the worker ends as SIGTERM says (the trial runs again on resume)."""
    worker = _Worker(tmp_path, server.url)
    worker.expect("out", "scoring 0")
    server.signal(signal.SIGSTOP)
    worker.proc.send_signal(signal.SIGTERM)
    status, printed, _ = worker.finish()
    assert status == 143, printed
    assert "terminated" in printed and PASSWORD not in printed


def _hold_the_last_slot(url: str) -> None:
    """A running trial of a live process of this host (this test) takes the only slot."""
    from hf_recycle._search.space import SearchSpace
    from hf_recycle._search.study import StudyConfig, create_or_load_study, open_storage
    from hf_recycle._search.worker import WORKER_ATTR, worker_identity

    config = StudyConfig(
        space=SearchSpace(3), checkpoints=["a", "b", "c"], tasks=["t"], directions=[True], baselines=()
    )
    study = create_or_load_study(open_storage(url, None), "s", config)
    trial = study.ask()
    study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, worker_identity())


def test_a_waiting_worker_stops_on_sigterm(server, tmp_path):
    _hold_the_last_slot(server.url)
    worker = _Worker(tmp_path, server.url, trials=1)
    worker.expect("err", "waiting")
    worker.proc.send_signal(signal.SIGTERM)
    status, printed, seconds = worker.finish()
    assert status == 143 and "terminated" in printed, printed
    assert seconds < 10


def test_a_waiting_worker_whose_server_is_killed_stops_with_a_clear_error(server, tmp_path):
    _hold_the_last_slot(server.url)
    worker = _Worker(tmp_path, server.url, trials=1)
    worker.expect("err", "waiting")
    server.signal(signal.SIGKILL)
    status, printed, _ = worker.finish()
    assert status == 1, printed
    # its next look at the study (every second) meets the dead server, or the watch does
    _assert_clear_error(printed, server, "cannot be reached", "did not answer for 3 s")
