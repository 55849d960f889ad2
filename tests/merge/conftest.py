"""Fixtures of the merge tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from hf_recycle._merge import streaming
from hf_recycle.testing import models


@pytest.fixture(scope="session")
def gpt2_untied(tmp_path_factory) -> Path:
    """A tiny GPT-2 saved with untied embeddings (lm_head.weight on disk)."""
    config = models.tiny_gpt2_config(tie_word_embeddings=False)
    model = models.build_model(config, seed=11)
    return models.save_checkpoint(model, tmp_path_factory.mktemp("gpt2-untied") / "untied")


@pytest.fixture
def small_blocks(monkeypatch):
    """Force many row blocks per tensor so the chunked path is what runs."""
    monkeypatch.setattr(streaming, "CPU_BLOCK_ELEMENTS", 100)
