"""``hf-recycle ... | head``: a reader that closes stdout early ends the command quietly (status 141)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hf_recycle.cli import EXIT_BROKEN_PIPE


def _run_into_closing_reader(args, tmp_path, lines_read, unbuffered=False):
    """Run ``hf-recycle ARGS`` with stdout into a pipe whose reader reads ``lines_read`` lines and closes.

    ``unbuffered`` runs Python with ``PYTHONUNBUFFERED=1`` (each write fails at once) instead of the
    default block-buffered stdout (the failure shows when the buffer is flushed).

    Returns ``(exit status, the lines read, stderr)``.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    err_path = tmp_path / "stderr.txt"
    with err_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hf_recycle", *args], stdout=subprocess.PIPE, stderr=err, env=env
        )
        got = [proc.stdout.readline().decode() for _ in range(lines_read)]
        proc.stdout.close()
        status = proc.wait(timeout=120)
    return status, got, err_path.read_text()


@pytest.fixture
def big_folder(tmp_path):
    """A folder whose push plan (one line per file) is far larger than a pipe's buffer (64 KiB)."""
    folder = tmp_path / "model"
    folder.mkdir()
    for i in range(3000):
        (folder / f"shard-{i:05d}.safetensors").write_bytes(b"x")
    return folder


@pytest.mark.parametrize("unbuffered", [False, True])
def test_push_dry_run_into_head(big_folder, tmp_path, unbuffered):
    args = ["push", "--repo", "me/merged", "--from", str(big_folder), "--dry-run"]
    status, got, err = _run_into_closing_reader(args, tmp_path, lines_read=1, unbuffered=unbuffered)
    assert got[0].startswith("would push 3000 file(s)")
    assert status == EXIT_BROKEN_PIPE == 141
    assert err == "", err  # no traceback, no "Exception ignored ... BrokenPipeError"


@pytest.mark.parametrize("args", [["merge", "--help"], ["--version"], ["validate", "--help"]])
def test_reader_closed_before_any_output(args, tmp_path):
    """The reader is gone before the first write: with buffered stdout the failure shows when
    argparse's output is flushed at exit, and is handled there too."""
    status, _, err = _run_into_closing_reader(args, tmp_path, lines_read=0)
    assert status == EXIT_BROKEN_PIPE
    assert err == "", err


def test_normal_output_is_unchanged(big_folder, tmp_path):
    args = ["push", "--repo", "me/merged", "--from", str(big_folder), "--dry-run"]
    out = subprocess.run(
        [sys.executable, "-m", "hf_recycle", *args], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stderr == ""
    assert len(out.stdout.splitlines()) == 3001 and out.stdout.splitlines()[-1].endswith("(1 bytes)")
