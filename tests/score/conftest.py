"""Fixtures of the scoring tests: a character tokenizer, tiny random models and a small data file."""

from __future__ import annotations

import pytest
from score_reference import write_jsonl

from hf_recycle.testing import models


@pytest.fixture(scope="session")
def char_tokenizer():
    return models.build_char_tokenizer()


@pytest.fixture(scope="session")
def llama_model():
    return models.build_model(models.tiny_llama_config(), seed=0)


@pytest.fixture(scope="session")
def gpt2_model():
    return models.build_model(models.tiny_gpt2_config(), seed=3)


@pytest.fixture
def data_dir(tmp_path):
    """A folder with d.jsonl: five ``question``/``answer`` rows with ``opts`` (the ``addition_spec`` data)."""
    write_jsonl(
        tmp_path / "d.jsonl",
        [{"question": f"{i}+1", "answer": str(i + 1), "opts": ["a", "b"]} for i in range(5)],
    )
    return tmp_path
