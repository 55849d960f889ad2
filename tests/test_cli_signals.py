"""SIGTERM ends a command like Ctrl-C (its partial output removed, status 143), and a SIGKILLed
merge's partial folder is removed by the next merge to the same output.

The merges run as real ``hf-recycle merge`` processes. To stop one mid-merge without guessing at
timing, the child's shard writer pauses (until a signal ends the process) right after it wrote
the first block, and tells the test so on stdout: the signal then always lands mid-merge, with a
shard on disk.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hf_recycle import cli
from hf_recycle.cli import EXIT_TERMINATED
from hf_recycle.outputs import OWNER_FILE

# ``python -c`` body: hf-recycle's command line, with a shard writer that pauses after its first block.
PAUSING_CLI = r"""
import sys, threading
from hf_recycle import cli
from hf_recycle._merge import writer

real_write = writer.ShardedSafetensorsWriter.write
paused = []

def write(self, key, data, row_start=0):
    real_write(self, key, data, row_start)
    if not paused:
        paused.append(key)
        print("paused in the main thread" if threading.current_thread() is threading.main_thread() else "paused")
        sys.stdout.flush()
        threading.Event().wait()  # mid-merge until a signal ends the process

writer.ShardedSafetensorsWriter.write = write
sys.exit(cli.main(sys.argv[1:]))
"""


def _dot_names(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _start(args: list[str], tmp_path: Path, code: str | None = None, env: dict | None = None):
    """Start ``hf-recycle ARGS`` (or ``python -c CODE ARGS``); stderr goes to a file."""
    err = (tmp_path / "stderr.txt").open("wb")
    run = ["-c", code] if code else ["-m", "hf_recycle"]
    # one merge worker, so that the pause (and the signal's exception) is in the main thread
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, *run, *args], stdout=subprocess.PIPE, stderr=err, env=env, text=True
    )
    err.close()
    return proc


def _paused_merge(ckpts, out: Path, tmp_path: Path):
    proc = _start(
        ["merge", *map(str, ckpts), "--output", str(out), "--max-shard-size", "30KB"], tmp_path, PAUSING_CLI
    )
    try:
        line = proc.stdout.readline().strip()
        assert line == "paused in the main thread", (tmp_path / "stderr.txt").read_text()
        (partial,) = [p for p in out.parent.iterdir() if p.name.endswith(".partial")]
        assert any(p.name.endswith(".safetensors") for p in partial.iterdir())  # mid-merge: a shard on disk
    except BaseException:
        _end(proc)
        raise
    return proc, partial


def _end(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> int:
    """Send ``sig`` to ``proc`` (unless it has exited) and return its exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
    status = proc.wait(timeout=120)
    proc.stdout.close()
    return status


@pytest.mark.slow
def test_sigterm_mid_merge_leaves_nothing_and_exits_143(llama_pool, tmp_path):
    _, ckpts = llama_pool
    out = tmp_path / "out"
    proc, _ = _paused_merge(ckpts, out, tmp_path)
    status = _end(proc, signal.SIGTERM)
    err = (tmp_path / "stderr.txt").read_text()
    assert status == EXIT_TERMINATED == 143, err
    assert err.endswith("terminated (SIGTERM)\n") and "Traceback" not in err
    assert not out.exists() and _dot_names(tmp_path) == []


@pytest.mark.slow
def test_sigkilled_merge_leftover_is_removed_by_the_next_merge(llama_pool, tmp_path, capsys):
    _, ckpts = llama_pool
    out = tmp_path / "out"
    proc, partial = _paused_merge(ckpts, out, tmp_path)
    owner = json.loads((partial / OWNER_FILE).read_text())
    assert owner["pid"] == proc.pid and owner["output"] == "out"
    assert _end(proc, signal.SIGKILL) == -signal.SIGKILL
    assert partial.exists()  # nothing can clean up after SIGKILL...
    assert cli.main(["merge", *map(str, ckpts), "--output", str(out)]) == 0
    err = capsys.readouterr().err
    freed = r"removed 1 stale partial folder\(s\) of '.*' left by killed runs \([\d.]+ (bytes|kB|MB) freed\)"
    assert re.search(freed, err), err  # ...but the next merge does
    assert not partial.exists() and _dot_names(tmp_path) == []
    assert (out / "model-00001-of-00002.safetensors").is_file() or (out / "model.safetensors").is_file()


def test_sigterm_handler_is_restored_and_only_set_in_the_main_thread(monkeypatch):
    before = signal.getsignal(signal.SIGTERM)
    seen = []
    # a command that records the SIGTERM handler it runs under
    monkeypatch.setattr(
        "hf_recycle.commands.validate.run", lambda args: seen.append(signal.getsignal(signal.SIGTERM))
    )
    assert cli.main(["validate", "any.yaml"]) == 0
    assert seen == [cli._raise_terminated] and signal.getsignal(signal.SIGTERM) is before
    worker = threading.Thread(target=lambda: seen.append(cli.main(["validate", "any.yaml"])))
    worker.start()
    worker.join()
    assert seen[1:] == [before, 0]


# --- SIGTERM during a download from the Hub -------------------------------------------------


class _StallingProxy:
    """A proxy in front of the local Hub that sends half of the first large file, then stalls.

    ``half_sent`` is set once the client has half of the file; the connection stays open until
    ``release`` (set on stop).
    """

    def __init__(self, upstream: str, large: int = 64 * 1024) -> None:
        self.half_sent, self.release = threading.Event(), threading.Event()
        target = urllib.parse.urlsplit(upstream)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                self._forward("GET")

            def do_HEAD(self) -> None:  # noqa: N802
                self._forward("HEAD")

            def _forward(self, method: str) -> None:
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(method, self.path, headers=headers)
                response = conn.getresponse()
                body = response.read()
                conn.close()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() in ("connection", "server", "date", "transfer-encoding"):
                        continue
                    if key.lower() == "content-length" and method == "GET":
                        value = str(len(body))
                    self.send_header(key, value.replace(upstream, proxy.endpoint))
                self.end_headers()
                if method == "HEAD":
                    return
                if len(body) >= large and not proxy.half_sent.is_set():
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    proxy.half_sent.set()
                    proxy.release.wait(timeout=300)
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub_with_model(llama_pool, monkeypatch):
    import huggingface_hub.constants as c

    from hf_recycle.testing.local_hub import LocalHub

    _, ckpts = llama_pool
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "HF_HUB_DISABLE_PROGRESS_BARS", True, raising=False)
    with LocalHub() as hub:
        hub.publish(ckpts[0], "org/model")
        yield hub


@pytest.mark.slow
def test_sigterm_during_a_hub_download_exits_143_and_leaves_nothing(hub_with_model, tmp_path):
    proxy = _StallingProxy(hub_with_model.endpoint)
    out = tmp_path / "outputs" / "merged"
    env = {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    try:
        proc = _start(
            ["merge", "org/model", "--endpoint", proxy.endpoint, "--output", str(out)], tmp_path, env=env
        )
        try:
            deadline = time.monotonic() + 300  # a hang fails, it does not block the suite
            while not proxy.half_sent.wait(timeout=0.05):  # until the weights are half downloaded
                assert proc.poll() is None and time.monotonic() < deadline, (
                    tmp_path / "stderr.txt"
                ).read_text()
        finally:
            status = _end(proc, signal.SIGTERM)
    finally:
        proxy.stop()
    err = (tmp_path / "stderr.txt").read_text()
    assert status == EXIT_TERMINATED, err
    assert err.endswith("terminated (SIGTERM)\n") and "Traceback" not in err
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
