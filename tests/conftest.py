"""Shared fixtures. No test touches the network: the Hub cache, offline flags and
tokens are pointed at a per-session temporary folder before any HF library loads."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

_HF_HOME = tempfile.mkdtemp(prefix="hf-recycle-tests-hf-home-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)  # the session leaves nothing in /tmp
for _var, _value in {
    "HF_HOME": _HF_HOME,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ[_var] = _value
for _var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT"):
    os.environ.pop(_var, None)

import pytest  # noqa: E402
import torch  # noqa: E402

from hf_recycle.testing import models  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _isolated_hf(monkeypatch, tmp_path):
    """Point huggingface_hub at a private cache and keep it offline unless a test serves a Hub."""
    import huggingface_hub.constants as c

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache), raising=False)
    monkeypatch.setattr(c, "HUGGINGFACE_HUB_CACHE", str(cache), raising=False)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(c, "HF_TOKEN_PATH", str(tmp_path / "no-token"), raising=False)
    yield


@pytest.fixture(scope="session")
def llama_pool(tmp_path_factory) -> tuple[Path, list[Path]]:
    """Base + 3 fine-tunes of a tiny untied Llama, float32, single-file weights."""
    return models.build_pool(tmp_path_factory.mktemp("llama"), "llama", n=3, seed=0)


@pytest.fixture(scope="session")
def llama_pool_sharded(tmp_path_factory) -> tuple[Path, list[Path]]:
    """Base + 3 fine-tunes of a tiny Llama saved in several shards with an index."""
    return models.build_pool(
        tmp_path_factory.mktemp("llama-sharded"), "llama", n=3, seed=1, max_shard_size="60KB"
    )


@pytest.fixture(scope="session")
def llama_pool_bf16(tmp_path_factory) -> tuple[Path, list[Path]]:
    """Base + 3 fine-tunes of a tiny Llama in bfloat16."""
    return models.build_pool(
        tmp_path_factory.mktemp("llama-bf16"), "llama", n=3, seed=2, dtype=torch.bfloat16
    )


@pytest.fixture(scope="session")
def gpt2_pool(tmp_path_factory) -> tuple[Path, list[Path]]:
    """Base + 3 fine-tunes of a tiny GPT-2 with tied embeddings (no lm_head.weight on disk)."""
    return models.build_pool(tmp_path_factory.mktemp("gpt2"), "gpt2", n=3, seed=3)


@pytest.fixture(scope="module")
def tiny_lm_served(tmp_path_factory):
    """A local Hub with demo/tiny-lm: branch base, and step-* branches holding three fine-tunes
    (see tests/recipe_runs.py); yields ``(server, shas by branch)``."""
    import huggingface_hub.constants as c
    from recipe_runs import STEPS

    from hf_recycle.testing.local_hub import LocalHub

    root = tmp_path_factory.mktemp("pipeline-models")
    base, ckpts = models.build_pool(root / "pool", "llama", n=3, seed=5, scale=0.2)
    for folder in [base, *ckpts]:
        (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny\n")
    with LocalHub() as hub, pytest.MonkeyPatch.context() as mp:
        mp.setattr(c, "HF_HUB_OFFLINE", False)
        shas = {"base": hub.publish(base, "demo/tiny-lm", branch="base")}
        for step, ckpt in zip(STEPS, ckpts, strict=True):
            shas[step] = hub.publish(ckpt, "demo/tiny-lm", branch=step)
        yield hub, shas


@pytest.fixture
def tiny_lm_hub(tiny_lm_served, monkeypatch):
    """:func:`tiny_lm_served`, online, as huggingface_hub's endpoint, with its token: ``(server, shas)``."""
    import huggingface_hub.constants as c

    server, shas = tiny_lm_served
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", server.token)  # pushes need the server's token
    monkeypatch.setattr(c, "ENDPOINT", server.endpoint)
    monkeypatch.setattr(
        c, "HUGGINGFACE_CO_URL_TEMPLATE", server.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    return server, shas
