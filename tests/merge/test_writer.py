"""The size-capped shard writer (:mod:`hf_recycle._merge.writer`), through the public merge: shard
names, the index and the cap, and the same bytes whatever the number of threads writing blocks."""

from __future__ import annotations

import json

import pytest
import torch
from merge_reference import assert_state_close, f32_states, ref_task_vectors, ref_topk
from safetensors import safe_open

from hf_recycle._merge import streaming
from hf_recycle._merge.engine import merge
from hf_recycle.testing import models


def test_sharded_in_and_out(llama_pool_sharded, tmp_path, small_blocks):
    base, ckpts = llama_pool_sharded
    assert len(models.weights_files(ckpts[0])) > 1
    result = merge(ckpts, tmp_path / "out", method="ties", base=base, density=0.5, max_shard_size="40KB")
    shards = [f for f in result.files if f.endswith(".safetensors")]
    assert len(shards) >= 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    for shard in shards:
        with safe_open(str(tmp_path / "out" / shard), "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        assert sum(t.numel() * t.element_size() for t in tensors.values()) <= 40_000 or len(tensors) == 1
    want = ref_task_vectors(
        f32_states(ckpts), f32_states([base])[0], [1 / 3] * 3, normalize=True, consensus=True,
        sparsify=lambda d, i, k: ref_topk(d, 0.5),
    )  # fmt: skip
    assert_state_close(models.load_state_dict(tmp_path / "out"), want)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert torch.equal(
        model.state_dict()["lm_head.weight"], models.load_state_dict(tmp_path / "out")["lm_head.weight"]
    )


@pytest.mark.parametrize(("method", "kwargs"), [("linear", {}), ("ties", {"density": 0.4})])
def test_any_number_of_workers_gives_the_same_bytes(
    llama_pool_sharded, tmp_path, monkeypatch, method, kwargs
):
    base, ckpts = llama_pool_sharded
    monkeypatch.setattr(streaming, "CPU_BLOCK_ELEMENTS", 64)  # many blocks per tensor, handed out in turn
    outputs = []
    for workers in (1, 3):
        monkeypatch.setattr(streaming, "default_workers", lambda device, n=workers: n)
        out = tmp_path / f"out-{workers}"
        merge(ckpts, out, method=method, base=base, weights=[0.2, 0.5, 0.3], max_shard_size="30KB", **kwargs)
        outputs.append({f.name: f.read_bytes() for f in out.glob("*.safetensors")})
    assert len(outputs[0]) > 1 and outputs[0] == outputs[1]
