"""A full disk ends a command with one paragraph (which folder, bytes needed and free, what was
kept) and status 1, never a traceback, and leaves nothing partial: merges, Hub downloads and a
search's outputs. The disks are real, small tmpfs mounts (the tests skip where mounting is not
allowed); the up-front check is switched off where a test needs the write itself to fail."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from hf_recycle import cli, outputs
from hf_recycle._merge.engine import merge
from hf_recycle.errors import DiskFullError
from hf_recycle.testing import models

MIB = 1024 * 1024


def _mount_tmpfs(mount: Path, size: str) -> None:
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


@pytest.fixture
def small_disk(tmp_path):
    """A fresh 1 MiB tmpfs mounted on ``tmp_path/disk``."""
    _mount_tmpfs(tmp_path / "disk", "1M")
    yield tmp_path / "disk"
    subprocess.run(["umount", "-l", str(tmp_path / "disk")], check=True)


@pytest.fixture
def search_disk(tmp_path):
    """A fresh 8 MiB tmpfs mounted on ``tmp_path/disk``: room for a small search's study and plots."""
    _mount_tmpfs(tmp_path / "disk", "8M")
    yield tmp_path / "disk"
    subprocess.run(["umount", "-l", str(tmp_path / "disk")], check=True)


@pytest.fixture(scope="module")
def big_pool(tmp_path_factory):
    """Two ~2 MB checkpoints: their merge does not fit on a 1 MiB disk."""
    _, ckpts = models.build_pool(
        tmp_path_factory.mktemp("big"), "llama", n=2, seed=4,
        config_overrides={"hidden_size": 128, "intermediate_size": 512},
    )  # fmt: skip
    assert (ckpts[0] / "model.safetensors").stat().st_size > 2 * MIB
    return ckpts


def _used(disk: Path) -> list[str]:
    return sorted(str(p.relative_to(disk)) for p in disk.rglob("*"))


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    (line,) = [x for x in err.replace("\n  ", " ").splitlines() if x.startswith("error: ")]
    return line


def test_merge_too_big_for_the_disk_is_refused_up_front(big_pool, small_disk, capsys):
    out = small_disk / "merged"
    assert cli.main(["merge", *map(str, big_pool), "--output", str(out)]) == 1
    line = _error(capsys)
    assert line.startswith(f"error: not enough disk space for the merge into '{out}': it needs 2.")
    assert re.search(rf"MB and the disk of '{small_disk}' has 1\.0\d MB free; nothing was written", line), (
        line
    )
    assert _used(small_disk) == []


def test_disk_full_in_the_middle_of_a_merge(big_pool, small_disk, capsys, monkeypatch):
    """The check up front is off: the shards' writes themselves hit ENOSPC."""
    monkeypatch.setattr(outputs, "check_free_space", lambda *args, **kwargs: None)
    (small_disk / "old").mkdir()
    (small_disk / "old" / "keep.txt").write_text("previous output")
    for out, extra in [(small_disk / "merged", []), (small_disk / "old", ["--overwrite"])]:
        assert cli.main(["merge", *map(str, big_pool), "--output", str(out), *extra]) == 1
        line = _error(capsys)
        assert line.startswith(f"error: the disk ran out of space while writing the merge into '{out}'")
        assert f"the disk of '{small_disk}' has 1.0" in line
        assert "nothing was written (the partial folder was removed)" in line
        assert _used(small_disk) == ["old", "old/keep.txt"]  # no partial folder; the old output intact
    with pytest.raises(DiskFullError) as caught:
        merge(big_pool, small_disk / "merged")
    assert caught.value.errno == 28 and isinstance(caught.value, OSError)
    assert caught.value.needed > 2 * MIB and caught.value.free > 1000 * 1000


@pytest.fixture
def hub_cache_on_small_disk(small_disk, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(small_disk / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "HF_HUB_DISABLE_PROGRESS_BARS", True, raising=False)
    return small_disk


@pytest.fixture
def big_on_hub(big_pool):
    import huggingface_hub.constants as c

    from hf_recycle.testing.local_hub import LocalHub

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(c, "HF_HUB_OFFLINE", False)
        with LocalHub() as hub:
            hub.publish(big_pool[0], "org/big")
            yield hub


@pytest.mark.filterwarnings("ignore:Not enough free disk space:UserWarning")  # huggingface_hub's own
def test_download_too_big_for_the_cache_disk(
    big_on_hub, hub_cache_on_small_disk, tmp_path, capsys, monkeypatch
):
    disk = hub_cache_on_small_disk
    out = tmp_path / "merged"
    args = ["merge", "org/big", "--endpoint", big_on_hub.endpoint, "--output", str(out)]
    assert cli.main(args) == 1  # refused before the download starts
    line = _error(capsys)
    assert line.startswith(
        "error: not enough disk space for the download of 'org/big@main' into the Hub cache: it needs 2."
    )
    assert f"MB and the disk of '{disk / 'hub'}' has 1.0" in line and "nothing was written" in line
    assert line.endswith("free some space, or set HF_HUB_CACHE to a folder on a larger disk")
    assert not [p for p in disk.rglob("*") if p.is_file() and p.stat().st_size > 4096]  # no weights fetched

    from hf_recycle.hub import download

    monkeypatch.setattr(download, "check_free_space", lambda *args, **kwargs: None)
    assert cli.main(args) == 1  # the download itself hits ENOSPC
    line = _error(capsys)
    assert line.startswith("error: the disk ran out of space while writing the download of 'org/big@main'")
    assert "no partial file is left" in line
    assert not [p for p in disk.rglob("*") if p.name.endswith(".incomplete")]
    assert not out.exists() and not list(tmp_path.glob(".merged.*"))


def _sums_recipe(folder: Path, ckpts, out: Path) -> Path:
    rows = [{"q": f"{i}+{i}=", "a": str(2 * i)} for i in range(8)]
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {
        "name": f"full-disk-{uuid.uuid4().hex[:6]}",
        "checkpoints": [str(p) for p in ckpts],
        "search": {"trials": 4, "sampler": "random"},
        "tasks": [
            {
                "name": "sums",
                "data": {"path": "json", "data_files": "data.jsonl"},
                "search_split": "train[:4]",
                "test_split": "train[4:]",
                "kind": "loglikelihood",
                "prompt": "{q}",
                "target": "{a}",
            }
        ],
        "output": {"dir": str(out)},
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
def test_search_outputs_on_a_full_disk(llama_pool, search_disk, tmp_path, capsys):
    """A search whose output disk fills up (here: at its end, when the study and results are
    written) says so in one paragraph; no half-written results, no temporary files."""
    _, ckpts = llama_pool
    out = search_disk / "search"
    recipe = _sums_recipe(tmp_path, ckpts[:2], out)
    assert cli.main(["search", str(recipe)]) == 0
    capsys.readouterr()
    (out / "results.json").unlink()
    (out / "results.md").unlink()
    with (search_disk / "ballast").open("wb", buffering=0) as ballast:  # fill the disk to the last byte
        with pytest.raises(OSError, match="No space left"):
            while True:
                ballast.write(b"\0" * 4096)
    assert cli.main(["search", str(recipe)]) == 1
    line = _error(capsys)
    assert line.startswith(
        f"error: the disk ran out of space while writing the search's outputs: the disk of '{out}'"
    )
    assert "the study keeps every finished trial: free some space and run again" in line
    assert not (out / "results.json").exists()
    assert not [p.name for p in out.rglob("*") if p.name.endswith(".tmp")]
    (search_disk / "ballast").unlink()
    assert cli.main(["search", str(recipe)]) == 0  # resumes: the study has its 4 trials
    assert json.loads((out / "results.json").read_text())["trials"] == 4


def test_an_unwrapped_full_disk_is_still_one_paragraph(monkeypatch, capsys):
    """A write that no stage turned into a DiskFullError (a model card, say) still ends in one
    paragraph and status 1; --debug shows the traceback."""

    def write_card(args):
        raise OSError(28, "No space left on device", "out/model/README.md")

    monkeypatch.setattr("hf_recycle.commands.validate.run", write_card)
    assert cli.main(["validate", "any.yaml"]) == 1
    line = _error(capsys)
    assert (
        line
        == "error: no space left on the disk while writing 'out/model/README.md': free some space and run again"
    )
    with pytest.raises(OSError, match="No space left"):
        cli.main(["--debug", "validate", "any.yaml"])
