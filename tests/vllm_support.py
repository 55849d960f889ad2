"""Helpers of the ``vllm`` engine tests (tests/score/test_vllm_engine.py, tests/search/test_search_vllm.py).

vLLM pins its own torch and transformers, so these tests run in ``.venv-vllm`` (``make
install-vllm``; ``make test`` runs them there) and skip elsewhere, with the reason that
``HF_RECYCLE_VLLM_SKIP_REASON`` gives (``make test`` sets it when ``.venv-vllm`` cannot be built).
"""

from __future__ import annotations

import importlib.util
import os

import pytest

# A tiny Llama that vLLM's CPU attention serves (head size 32, its smallest), with grouped-query
# attention so that the fused qkv projection has unequal q and kv parts, and a fused gate_up.
VLLM_LLAMA = dict(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, intermediate_size=128)
# float32 for equality with the hf engine, no compilation, a small KV cache (the CPU default is 1 GiB).
VLLM_OPTIONS = {"dtype": "float32", "enforce_eager": True, "kv_cache_memory_bytes": 64 << 20}


def skip_without_vllm() -> None:
    """Skip the calling test module when vLLM is not installed (without importing it)."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip(
            os.environ.get("HF_RECYCLE_VLLM_SKIP_REASON")
            or "vllm is not installed here: the vllm engine tests run in .venv-vllm (make install-vllm; "
            "make test runs them there)",
            allow_module_level=True,
        )


def build_vllm_pool(root, seed: int = 7):
    """Base + 3 fine-tunes of the :data:`VLLM_LLAMA` model, float32: ``(base, [ckpt, ...])``."""
    from hf_recycle.testing import models

    return models.build_pool(root, "llama", n=3, seed=seed, scale=0.3, config_overrides=VLLM_LLAMA)
