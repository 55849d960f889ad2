"""The CUDA paths against the CPU ones: merges, and a search's candidates in every tier.

Skipped where torch sees no CUDA GPU (CI has none); ``benchmarks/gpu_check.sh`` runs them on a
machine with one. The CPU result is the reference: the GPU sums in another order, so values
agree to float32 rounding, not bit for bit. ``HF_RECYCLE_TEST_GPU=cpu`` runs the same checks with
the CPU in the GPU's place (to check the tests themselves on a machine without one).
"""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from hf_recycle._merge.engine import merge
from hf_recycle._merge.inputs import open_inputs
from hf_recycle._merge.sources import SafetensorsSource
from hf_recycle._search.resident import ResidentModel
from hf_recycle._search.streamed import StreamedModel
from hf_recycle.testing.models import build_lora_adapter

GPU = os.environ.get("HF_RECYCLE_TEST_GPU", "cuda")
pytestmark = pytest.mark.skipif(GPU == "cuda" and not torch.cuda.is_available(), reason="no CUDA GPU here")

WEIGHTS = [0.5, 0.2, 0.3]


def _close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str) -> None:
    assert got.keys() == want.keys(), what
    for key, tensor in want.items():
        assert got[key].device.type == "cpu" and got[key].dtype == tensor.dtype, (what, key)
        torch.testing.assert_close(got[key], tensor, rtol=1e-5, atol=1e-6, msg=f"{what}: {key}")


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [("linear", {}), ("task_arithmetic", {"lambda_": 0.8}), ("ties", {"density": 0.5})],
)
def test_cuda_merge_equals_cpu(llama_pool, tmp_path, method, kwargs):
    base, ckpts = llama_pool
    extra = {} if method == "linear" else {"base": base}
    for name, device in (("cpu", "cpu"), ("gpu", GPU)):
        merge(ckpts, tmp_path / name, method=method, weights=WEIGHTS, device=device, **extra, **kwargs)
    got, want = (load_file(tmp_path / name / "model.safetensors") for name in ("gpu", "cpu"))
    _close(got, want, method)


def test_cuda_lora_merge_equals_cpu(llama_pool, tmp_path):
    base, _ = llama_pool
    adapters = [str(build_lora_adapter(base, tmp_path / f"a{i}", seed=i, scale=0.3)) for i in range(3)]
    for name, device in (("cpu", "cpu"), ("gpu", GPU)):
        merge(adapters, tmp_path / name, base=base, weights=WEIGHTS, device=device)
    got, want = (load_file(tmp_path / name / "model.safetensors") for name in ("gpu", "cpu"))
    _close(got, want, "lora")


def _candidates(cls, make_inputs, **options):
    checkpoints, base = make_inputs()
    model = cls(checkpoints, base=base, **options)
    out = []
    for weights in (WEIGHTS, [0.1, 0.1, 0.8]):
        model.set_weights(weights)
        out.append({k: v.detach().to("cpu") for k, v in model.state_dict().items()})
    return model, out


@pytest.mark.parametrize("pool", ["full", "lora"])
def test_cuda_candidates_equal_cpu_in_every_tier(llama_pool, tmp_path, pool):
    base_dir, ckpts = llama_pool
    if pool == "full":

        def make_inputs():
            return [SafetensorsSource(p) for p in ckpts], None

    else:
        paths = [str(build_lora_adapter(base_dir, tmp_path / f"a{i}", seed=i, scale=0.3)) for i in range(3)]

        def make_inputs():
            inputs = open_inputs(paths, str(base_dir))
            return inputs.checkpoints, inputs.base

    _, want = _candidates(ResidentModel, make_inputs, device="cpu")
    tiers = {
        "device": (ResidentModel, {"resident_device": GPU}),
        "host": (ResidentModel, {"resident_device": "cpu"}),
        "disk": (StreamedModel, {}),
    }
    for tier, (cls, options) in tiers.items():
        model, got = _candidates(cls, make_inputs, device=GPU, **options)
        assert next(model.model.parameters()).device.type == torch.device(GPU).type, tier
        for g, w in zip(got, want, strict=True):
            _close(g, w, f"{pool} {tier}")


def test_cuda_host_tier_with_the_native_sum(llama_pool_bf16, monkeypatch):
    """The host tier's chunks summed by the native kernel on the CPU, then sent to the GPU."""
    from hf_recycle._merge import fused

    _, ckpts = llama_pool_bf16
    if not fused.available():
        pytest.skip("the native sum does not build on this machine (no C compiler?): see the warning")
    calls: list[int | None] = []
    real = fused.weighted_sum
    monkeypatch.setattr(fused, "weighted_sum", lambda *a, **k: calls.append(real(*a, **k)) or calls[-1])

    def make_inputs():
        return [SafetensorsSource(p) for p in ckpts], None

    _, want = _candidates(ResidentModel, make_inputs, device="cpu", compiled_sum=False)
    model, got = _candidates(ResidentModel, make_inputs, device=GPU, resident_device="cpu", compiled_sum=True)
    assert any(c is not None for c in calls), "the native sum did not run"
    for g, w in zip(got, want, strict=True):  # the eager arithmetic, bit for bit
        for key, tensor in w.items():
            assert torch.equal(g[key].cpu(), tensor), key
