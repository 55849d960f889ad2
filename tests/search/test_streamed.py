"""The disk tier (StreamedModel) writes the same candidates as the resident model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_recycle._merge.sources import SafetensorsSource
from hf_recycle._search.resident import ResidentModel
from hf_recycle._search.streamed import StreamedModel

CASES = [
    ("linear", {}, None),
    ("task_arithmetic", {"lambda_": 0.8}, None),
    ("ties", {"lambda_": 1.0}, 0.5),
    ("dare_linear", {"seed": 3}, 0.7),
    ("dare_ties", {"seed": 3}, 0.7),
]


def _both(pool, method, kwargs, group_of=None):
    base_dir, ckpts = pool
    made = []
    for cls in (ResidentModel, StreamedModel):
        sources = [SafetensorsSource(p) for p in ckpts]
        base = SafetensorsSource(base_dir)
        made.append(cls(sources, base=base, method=method, device="cpu", group_of=group_of, **kwargs))
    return made


@pytest.mark.parametrize(("method", "kwargs", "density"), CASES)
def test_streamed_equals_resident(llama_pool, method, kwargs, density):
    resident, streamed = _both(llama_pool, method, kwargs)
    assert streamed.names == resident.names and streamed.resident_bytes == 0
    assert streamed.live_bytes == resident.live_bytes
    for weights in ([0.5, 0.3, 0.2], [0.1, 0.1, 0.8]):
        resident.set_weights(weights, density)
        streamed.set_weights(weights, density)
        got, want = streamed.state_dict(), resident.state_dict()
        for name in resident.names:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)
    # the live model itself (what the scorers run) carries the candidate
    live = dict(streamed.model.named_parameters())
    torch.testing.assert_close(live[resident.names[0]], resident.state_dict()[resident.names[0]])
    assert streamed.bytes_read > 0


def test_streamed_per_group_weights(llama_pool):
    names = list(SafetensorsSource(llama_pool[1][0]).keys())
    group_of = {n: (1 if "layers.1." in n else 0) for n in names}
    resident, streamed = _both(llama_pool, "linear", {}, group_of=group_of)
    w = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    resident.set_weights(w)
    streamed.set_weights(w)
    ckpt2 = SafetensorsSource(llama_pool[1][2])
    state = streamed.state_dict()
    for name in streamed.names:
        torch.testing.assert_close(state[name], resident.state_dict()[name])
    layer1 = next(n for n in streamed.names if "layers.1." in n)
    torch.testing.assert_close(state[layer1], ckpt2.read(layer1))


def test_streamed_bf16_and_tied_gpt2(llama_pool_bf16, gpt2_pool):
    for pool in (llama_pool_bf16, gpt2_pool):
        _, ckpts = pool
        resident = ResidentModel([SafetensorsSource(p) for p in ckpts], device="cpu")
        streamed = StreamedModel([SafetensorsSource(p) for p in ckpts], device="cpu")
        assert streamed.dtype == resident.dtype
        resident.set_weights([0.2, 0.5, 0.3])
        streamed.set_weights([0.2, 0.5, 0.3])
        for name in resident.names:
            torch.testing.assert_close(streamed.state_dict()[name], resident.state_dict()[name], msg=name)


@pytest.mark.parametrize("method", ["linear", "ties"])
def test_streamed_lora_equals_resident(llama_pool, tmp_path, method):
    from hf_recycle._merge.inputs import open_inputs
    from hf_recycle.testing.models import build_lora_adapter

    base_dir, _ = llama_pool
    paths = [build_lora_adapter(base_dir, tmp_path / f"lora-{i}", seed=i, scale=0.3) for i in range(3)]
    made = []
    for cls in (ResidentModel, StreamedModel):
        inputs = open_inputs([str(p) for p in paths], str(base_dir))
        made.append(cls(inputs.checkpoints, base=inputs.base, method=method, device="cpu"))
    resident, streamed = made
    resident.set_weights([0.5, 0.2, 0.3], 0.5 if method == "ties" else None)
    streamed.set_weights([0.5, 0.2, 0.3], 0.5 if method == "ties" else None)
    for name in resident.names:
        torch.testing.assert_close(streamed.state_dict()[name], resident.state_dict()[name], msg=name)


def test_streamed_nan_names_the_tensor(llama_pool, tmp_path):
    import shutil

    from safetensors.torch import save_file

    from hf_recycle.errors import NonFiniteError
    from hf_recycle.testing.models import load_state_dict

    _, ckpts = llama_pool
    bad = tmp_path / "bad"
    shutil.copytree(ckpts[1], bad)
    state = load_state_dict(ckpts[1])
    state["model.layers.1.mlp.down_proj.weight"][3, 4] = float("nan")
    for file in bad.glob("*.safetensors"):
        file.unlink()
    save_file({k: v.contiguous() for k, v in state.items()}, bad / "model.safetensors")
    streamed = StreamedModel([SafetensorsSource(ckpts[0]), SafetensorsSource(bad)], device="cpu")
    assert streamed.destination("model.layers.1.mlp.down_proj.weight", 0, 1) is not None
    # checked in the live model's own tensor, which the engine casts merged rows straight into
    for weights in ([0.5, 0.5], [1.0, 0.0]):  # 0 x NaN is NaN: a bad input spoils every candidate
        with pytest.raises(NonFiniteError, match="'model.layers.1.mlp.down_proj.weight'"):
            streamed.set_weights(weights)
