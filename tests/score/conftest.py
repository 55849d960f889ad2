"""Fixtures of the scoring tests: a character tokenizer and tiny random models."""

from __future__ import annotations

import pytest

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
