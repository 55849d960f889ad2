"""The resident model's weights equal the streaming merge's for the same parameters."""

import numpy as np
import pytest
import torch

from hf_recycle._merge.engine import merge
from hf_recycle._merge.sources import SafetensorsSource
from hf_recycle._search.resident import ResidentModel
from hf_recycle._search.space import group_tensors
from hf_recycle.errors import IncompatibleCheckpointsError
from hf_recycle.testing import models


def _compare(resident, folder, atol):
    streamed = models.load_state_dict(folder)
    live = resident.state_dict()
    assert set(live) <= set(streamed)
    for key, tensor in live.items():
        assert tensor.dtype == streamed[key].dtype, key
        torch.testing.assert_close(tensor.float(), streamed[key].float(), atol=atol, rtol=0, msg=key)


@pytest.mark.parametrize(
    "method, kwargs",
    [
        ("linear", {}),
        ("task_arithmetic", {"lambda_": 0.8}),
        ("ties", {"density": 0.5}),
        ("dare_linear", {"density": 0.6, "seed": 3}),
    ],
)
def test_resident_equals_streaming_merge(llama_pool, tmp_path, method, kwargs):
    base, ckpts = llama_pool
    weights = [0.5, 0.2, 0.3]
    sources = [SafetensorsSource(p) for p in ckpts]
    base_src = SafetensorsSource(base) if method != "linear" else None
    resident = ResidentModel(
        sources,
        base=base_src,
        method=method,
        lambda_=kwargs.get("lambda_", 1.0),
        seed=kwargs.get("seed", 0),
        device="cpu",
    )
    # a first, different candidate: buffers are reused, nothing must leak into the next one
    resident.set_weights([0.1, 0.1, 0.8], kwargs.get("density"))
    resident.set_weights(weights, kwargs.get("density"))
    out = merge(
        [str(p) for p in ckpts],
        tmp_path / "merged",
        method=method,
        weights=weights,
        base=str(base) if base_src else None,
        device="cpu",
        **kwargs,
    )
    assert out is not None
    _compare(resident, tmp_path / "merged", atol=1e-6)


def test_resident_bf16_and_tied_gpt2(llama_pool_bf16, gpt2_pool, tmp_path):
    for pool, name in [(llama_pool_bf16, "bf16"), (gpt2_pool, "gpt2")]:
        _, ckpts = pool
        resident = ResidentModel([SafetensorsSource(p) for p in ckpts], device="cpu")
        resident.set_weights([0.25, 0.25, 0.5])
        merge([str(p) for p in ckpts], tmp_path / name, weights=[0.25, 0.25, 0.5], device="cpu")
        # bf16: sums in float32 then one rounding; a different summation order may flip the last bit
        _compare(resident, tmp_path / name, atol=1e-2 if name == "bf16" else 1e-6)


def test_per_layer_weights_write_each_group(llama_pool):
    _, ckpts = llama_pool
    sources = [SafetensorsSource(p) for p in ckpts]
    groups, group_of = group_tensors(sources[0].keys(), 1)
    resident = ResidentModel(sources, group_of=group_of, device="cpu")
    w = np.eye(3)[[0, 1, 2, 0][: len(groups)]]  # one checkpoint per group
    resident.set_weights(w)
    states = [models.load_state_dict(p) for p in ckpts]
    for key, tensor in resident.state_dict().items():
        row = w[group_of[key]]
        torch.testing.assert_close(tensor, states[int(np.argmax(row))][key], atol=0, rtol=0)
    # and the model runs on the rewritten weights
    with torch.no_grad():
        logits = resident.model(torch.tensor([[1, 5, 7]])).logits
    assert torch.isfinite(logits).all()


def test_different_architectures_are_refused(llama_pool, gpt2_pool):
    with pytest.raises(IncompatibleCheckpointsError, match="architecture"):
        ResidentModel([SafetensorsSource(llama_pool[1][0]), SafetensorsSource(gpt2_pool[1][0])], device="cpu")
