"""Downloads: only what a merge needs, by commit sha, into the HF cache; offline from a warm cache."""

from __future__ import annotations

import huggingface_hub.constants as c
import pytest
import torch

from hf_recycle.errors import (
    CheckpointNotFoundError,
    HubRepoNotFoundError,
    HubRevisionNotFoundError,
    PickleRefusedError,
    SpecError,
)
from hf_recycle.hub.download import download_checkpoint, fetch_checkpoints
from hf_recycle.hub.resolve import resolve
from hf_recycle.testing import models

NEEDED = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
}


def _names(folder):
    return {p.name for p in folder.iterdir()}


def test_fetch_downloads_needed_files_by_sha_into_the_cache(local_hub):
    ((pin, folder),) = fetch_checkpoints(["org/run@step-10"], endpoint=local_hub.endpoint)
    sha = local_hub.shas["org/run@step-10"]
    assert pin.commit == sha
    assert folder == __import__("pathlib").Path(c.HF_HUB_CACHE) / "models--org--run" / "snapshots" / sha
    names = _names(folder)
    assert NEEDED <= names
    assert ".gitattributes" not in names and "README.md" not in names
    expected = models.load_state_dict(local_hub.ckpts[2])
    got = models.load_state_dict(folder)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_subfolder_download_skips_trainer_pickles(local_hub):
    pairs = fetch_checkpoints(["org/subs@main:checkpoint-*"], endpoint=local_hub.endpoint)
    assert [p.subfolder for p, _ in pairs] == ["checkpoint-2", "checkpoint-10"]
    for pin, folder in pairs:
        assert folder.name == pin.subfolder
        names = _names(folder)
        assert "model.safetensors" in names
        assert not names & {"optimizer.pt", "training_args.bin"}


def test_pickle_is_refused_unless_allowed(local_hub):
    with pytest.raises(PickleRefusedError, match=r"org/pickle@main.*pytorch_model\.bin.*allow_pickle"):
        fetch_checkpoints("org/pickle", endpoint=local_hub.endpoint)
    assert not list((__import__("pathlib").Path(c.HF_HUB_CACHE)).rglob("*.bin"))  # nothing fetched
    ((_, folder),) = fetch_checkpoints("org/pickle", endpoint=local_hub.endpoint, allow_pickle=True)
    assert _names(folder) == {"config.json", "pytorch_model.bin"}


def test_private_download_with_token(local_hub):
    ((pin, folder),) = fetch_checkpoints("org/secret", endpoint=local_hub.endpoint, token=local_hub.hub.token)
    assert (folder / "model.safetensors").is_file()


def test_offline_resolution_and_download_from_a_warm_cache(local_hub, monkeypatch):
    online = fetch_checkpoints(["org/run@step-1", "org/run@step-2"], endpoint=local_hub.endpoint)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    # An endpoint that cannot answer: offline mode must not need it.
    offline = fetch_checkpoints(["org/run@step-1", "org/run@step-2"], endpoint="http://127.0.0.1:9")
    assert [(p.commit, f) for p, f in offline] == [(p.commit, f) for p, f in online]
    # Globs expand over the cached branch names.
    assert [p.revision for p in resolve("org/run@step-*")] == ["step-1", "step-2"]
    sha = local_hub.shas["org/run@step-2"]
    assert download_checkpoint(resolve(f"org/run@{sha}")[0]) == online[1][1]
    with pytest.raises(HubRepoNotFoundError, match="not in the local cache"):
        resolve("org/trainer")
    with pytest.raises(SpecError, match="@history needs the Hub"):
        resolve("org/run@history")
    with pytest.raises(HubRevisionNotFoundError, match="step-10.*not in the local cache"):
        resolve("org/run@step-10")
    with pytest.raises(CheckpointNotFoundError, match="not in the local cache"):
        download_checkpoint(online[0][0].__class__(**{**online[0][0].__dict__, "subfolder": "nope"}))
