"""Faults leave nothing behind: leftovers of killed merges are removed by the next merge to the
same output (only when their owner is surely gone), output folders get a plain mkdir's mode, and
a merge that cannot fit on its disk is refused before it starts."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest

from hf_recycle import cli, outputs, processes
from hf_recycle._merge.engine import merge
from hf_recycle._merge.streaming import StreamingMerger
from hf_recycle.errors import DiskFullError
from hf_recycle.outputs import OWNER_FILE, remove_stale_leftovers
from hf_recycle.testing import models


def _dot_names(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _leftover(parent: Path, name: str, owner: dict | None, size: int = 1000) -> Path:
    """A folder like the ones a killed merge leaves: a partly written shard and an owner record."""
    path = parent / name
    path.mkdir()
    (path / "model.safetensors").write_bytes(b"\0" * size)
    if owner is not None:
        (path / OWNER_FILE).write_text(json.dumps(owner))
    return path


def _dead_pid() -> int:
    """The pid of a process that ran and was reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def zombie():
    """A child that exited but is not reaped yet (a zombie: its pid still exists)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, left unreaped
    yield proc.pid
    proc.wait()


def test_stale_leftovers_are_removed_only_when_their_owner_is_gone(tmp_path, zombie, caplog):
    out = tmp_path / "out"
    me = outputs.this_process()
    assert me["pid"] == os.getpid() and me["host"] == socket.gethostname()
    if me["start_time"] is None:
        pytest.skip("no /proc on this system: process start times are unknown")

    def owner(**changes):
        return {"output": "out", **me, **changes}

    gone = [
        _leftover(tmp_path, ".out.aaaaaaaa.partial", owner(pid=_dead_pid())),
        _leftover(
            tmp_path, ".out.bbbbbbbb.partial", owner(pid=zombie, start_time=processes._proc_stat(zombie)[1])
        ),
        _leftover(tmp_path, ".out.cccccccc.partial", owner(start_time=me["start_time"] + 1)),  # pid reused
        _leftover(tmp_path, ".out.dddddddd.old", owner(pid=_dead_pid())),  # trash of an overwrite
        _leftover(tmp_path, ".out.eeeeeeee.partial", owner(boot_id="another-boot")),  # before a reboot
    ]
    kept = [
        _leftover(tmp_path, ".out.ffffffff.partial", owner()),  # this process: alive
        _leftover(tmp_path, ".out.gggggggg.partial", owner(pid=_dead_pid(), host="another-host")),
        _leftover(tmp_path, ".out.hhhhhhhh.partial", owner(pid_namespace="pid:[1]")),  # another container
        _leftover(tmp_path, ".out.iiiiiiii.partial", None),  # no record: unknown, kept
        _leftover(tmp_path, ".out2.jjjjjjjj.partial", {**owner(pid=_dead_pid()), "output": "out2"}),
        _leftover(tmp_path, ".out.b.kkkkkkkk.partial", {**owner(pid=_dead_pid()), "output": "out.b"}),
    ]
    with caplog.at_level("INFO"):
        count, freed = remove_stale_leftovers(out)
    assert count == len(gone) and freed >= len(gone) * 1000
    assert not any(p.exists() for p in gone)
    assert all(p.exists() for p in kept)
    assert ".out.iiiiiiii.partial" in caplog.text and "no owner record" in caplog.text


def test_partial_of_a_live_merge_is_kept_until_its_owner_dies(llama_pool, tmp_path, capsys):
    """A partial whose owner runs (another merge to the same output) is never touched; once that
    process is gone, the next merge to the output removes it and says so."""
    _, ckpts = llama_pool
    out = tmp_path / "out"
    stuck = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        real_this_process = outputs.this_process

        def as_stuck():  # the record a merge running in the child would write
            return {**real_this_process(), "pid": stuck.pid, "start_time": processes._proc_stat(stuck.pid)[1]}

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(outputs, "this_process", as_stuck)
            partial = outputs._owned_sibling(out, "partial")
        (partial / "model.safetensors").write_bytes(b"\0" * 4096)
        assert cli.main(["merge", *map(str, ckpts), "--output", str(tmp_path / "other")]) == 0
        assert partial.exists()  # another output's merge leaves it alone
        assert cli.main(["merge", *map(str, ckpts), "--output", str(out), "--overwrite"]) == 0
        assert partial.exists()  # its owner is alive
    finally:
        stuck.kill()
        stuck.wait()
    capsys.readouterr()
    assert cli.main(["merge", *map(str, ckpts), "--output", str(out), "--overwrite"]) == 0
    assert "removed 1 stale partial folder(s)" in capsys.readouterr().err
    assert not partial.exists() and _dot_names(tmp_path) == []
    assert OWNER_FILE not in os.listdir(out)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o755), (0o027, 0o750), (0o002, 0o775)])
def test_output_folder_has_the_mode_of_a_plain_mkdir(llama_pool, tmp_path, umask, mode):
    _, ckpts = llama_pool
    previous = os.umask(umask)
    try:
        merge(ckpts, tmp_path / "out")
        merge(ckpts, tmp_path / "out", overwrite=True)  # through the trash folder of an overwrite
        (tmp_path / "plain").mkdir()
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "out" / "config.json").stat().st_mode) == 0o666 & ~umask


def test_merge_that_cannot_fit_is_refused_before_it_starts(llama_pool, tmp_path, monkeypatch, capsys):
    _, ckpts = llama_pool
    usage = namedtuple("usage", "total used free")
    free = {"bytes": 999}
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: usage(10**12, 0, free["bytes"]))
    real_run = StreamingMerger.run
    started = []
    monkeypatch.setattr(StreamingMerger, "run", lambda self, *a: started.append(1) or real_run(self, *a))
    out = tmp_path / "out"
    assert cli.main(["merge", *map(str, ckpts), "--output", str(out)]) == 1
    err = capsys.readouterr().err.replace("\n  ", " ")
    assert "\nerror: not enough disk space for the merge into" in err and "Traceback" not in err
    assert re.search(
        rf"it needs [\d.]+ kB and the disk of '{tmp_path}' has 999 bytes free; nothing was written", err
    )
    assert f"'{out}'" in err
    assert started == [] and not out.exists() and _dot_names(tmp_path) == []
    # what is needed: at least the tensor bytes, at most an input folder's bytes (headers included)
    with pytest.raises(DiskFullError) as caught:
        merge(ckpts, out)
    tensor_bytes = sum(t.numel() * t.element_size() for t in models.load_state_dict(ckpts[0]).values())
    folder_bytes = sum(p.stat().st_size for p in ckpts[0].iterdir())
    assert tensor_bytes < caught.value.needed < folder_bytes and caught.value.free == 999
    assert started == [] and not out.exists()
    free["bytes"] = caught.value.needed  # exactly enough
    merge(ckpts, out)
    assert started == [1] and (out / "model.safetensors").is_file()


def test_a_failed_swap_puts_the_previous_output_back(llama_pool, tmp_path, monkeypatch):
    """With --overwrite the old folder moves aside before the new one moves in; should the second
    rename fail (a full disk can refuse a directory entry), the old folder comes back."""
    _, ckpts = llama_pool
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.txt").write_text("x")
    real_rename = os.rename

    def rename(src, dst):
        if str(src).endswith(".partial"):
            raise OSError(28, "No space left on device")
        real_rename(src, dst)

    monkeypatch.setattr(outputs.os, "rename", rename)
    with pytest.raises(DiskFullError, match="nothing was written"):
        merge(ckpts, out, overwrite=True)
    assert os.listdir(out) == ["previous.txt"] and _dot_names(tmp_path) == []
