"""The host tier: candidates computed a chunk of rows at a time and sent through the copy pipeline.

On this CPU-only machine the pipeline's copies are synchronous, but everything else (row
chunks, LoRA factor rows, casts into the live dtype through the pipeline's buffers) is the
code a GPU run uses; the chunks are made tiny so that every tensor spans many of them.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from hf_recycle._merge.inputs import open_inputs
from hf_recycle._merge.sources import SafetensorsSource
from hf_recycle._search.host_tier import ChunkPipeline
from hf_recycle._search.resident import ResidentModel
from hf_recycle.testing import models

CHUNK = 40  # elements: smaller than most rows, so chunks are single rows or a few


def _pair(sources_fn, **kwargs):
    device = ResidentModel(sources_fn(), device="cpu", **kwargs)
    host = ResidentModel(sources_fn(), device="cpu", host_chunk=CHUNK, **kwargs)
    assert device._pipeline is None and host._pipeline is not None
    return device, host


def _assert_equal(device, host, what):
    want, got = device.state_dict(), host.state_dict()
    moved = 0
    for name in device.names:
        assert got[name].dtype == want[name].dtype, (what, name)
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-6, msg=f"{what}: {name}")
        moved += name in device.stacked
    assert moved >= 4  # not vacuous: tensors the inputs change went through the pipeline


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [("linear", {}), ("linear", {"normalize": False}), ("task_arithmetic", {"lambda_": 0.8})],
)
@pytest.mark.parametrize("pool", ["llama_pool", "llama_pool_bf16", "gpt2_pool"])
def test_host_tier_equals_device_tier(request, pool, method, kwargs):
    base_dir, ckpts = request.getfixturevalue(pool)

    def sources():
        return [SafetensorsSource(p) for p in ckpts]

    extra = {"base": SafetensorsSource(base_dir)} if method == "task_arithmetic" else {}
    device, host = _pair(sources, method=method, **kwargs, **extra)
    for weights in ([0.1, 0.1, 0.8], [0.5, 0.3, 0.4]):  # a first candidate must not leak into the next
        device.set_weights(weights)
        host.set_weights(weights)
    _assert_equal(device, host, pool)
    pipeline = host._pipeline
    assert pipeline is not None and pipeline.chunk >= CHUNK
    assert pipeline.copies > 2 * len(host.stacked)  # every tensor spanned several chunks
    # float32 sums go straight into the sent buffers; bfloat16 ones are cast into bfloat16 buffers
    want = torch.bfloat16 if pool == "llama_pool_bf16" else torch.float32
    assert {dtype for dtype, _ in pipeline._buffers} == {want}


def test_host_tier_lora_and_mixed_pool_and_groups(llama_pool, tmp_path):
    base_dir, ckpts = llama_pool
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = models.build_lora_adapter(
            base_dir, tmp_path / "a", r=4, target_modules=["q_proj", "v_proj"], seed=1
        )
        b = models.build_lora_adapter(
            base_dir, tmp_path / "b", r=2, target_modules=["q_proj", "down_proj"], seed=2
        )
    paths = [str(a), str(ckpts[0]), str(b)]
    names = list(SafetensorsSource(ckpts[0]).keys())
    group_of = {n: (1 if "layers.1." in n else 0) for n in names}

    def sources():
        return open_inputs(paths, base=str(base_dir)).checkpoints

    for method, kwargs in (("linear", {}), ("task_arithmetic", {"lambda_": 0.9})):
        base = open_inputs(paths, base=str(base_dir)).base
        device, host = _pair(sources, method=method, base=base, group_of=group_of, **kwargs)
        w = np.array([[0.6, 0.1, 0.3], [0.2, 0.5, 0.3]])
        device.set_weights(w)
        host.set_weights(w)
        _assert_equal(device, host, method)
        assert any(plan is not None and plan.u is not None for plan in host._plans)  # factors, not ΔW


def test_host_tier_ties_goes_through_the_engine(llama_pool):
    base_dir, ckpts = llama_pool

    def sources():
        return [SafetensorsSource(p) for p in ckpts]

    device, host = _pair(sources, method="ties", base=SafetensorsSource(base_dir))
    device.set_weights([0.5, 0.2, 0.3], 0.5)
    host.set_weights([0.5, 0.2, 0.3], 0.5)
    _assert_equal(device, host, "ties")


def test_pipeline_alternates_two_buffers_and_refuses_oversize_chunks():
    pipeline = ChunkPipeline(torch.device("cpu"), 8)
    assert not pipeline.pin  # pinned only for a CUDA device
    first = pipeline.buffer(torch.float32, 8)
    second = pipeline.buffer(torch.float32, 3)
    third = pipeline.buffer(torch.float32, 5)
    assert first.data_ptr() != second.data_ptr() and third.data_ptr() == first.data_ptr()
    dest = torch.zeros(5)
    pipeline.send(dest, third.copy_(torch.arange(5.0)))
    assert dest.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0] and pipeline.copies == 1
    assert pipeline.nbytes == 2 * 8 * 4
    with pytest.raises(ValueError, match="9 elements does not fit the pipeline's 8"):
        pipeline.buffer(torch.float32, 9)


def test_device_tier_sums_low_precision_stacks_block_by_block(llama_pool_bf16, tmp_path, monkeypatch):
    """bfloat16 stacks are summed a cache-sized block at a time: many blocks give the streaming merge's result."""
    from hf_recycle._search import resident as resident_module
    from hf_recycle._search.streamed import StreamedModel

    monkeypatch.setattr(resident_module, "CACHE_BLOCK_ELEMENTS", 48)  # every tensor spans many blocks
    base_dir, ckpts = llama_pool_bf16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapter = models.build_lora_adapter(base_dir, tmp_path / "a", r=2, target_modules=["q_proj"], seed=3)
    paths = [str(ckpts[0]), str(adapter), str(ckpts[2])]
    blocked = ResidentModel(open_inputs(paths, base=str(base_dir)).checkpoints, device="cpu")
    streamed = StreamedModel(open_inputs(paths, base=str(base_dir)).checkpoints, device="cpu")
    assert blocked._pipeline is None and {p.stack.dtype for p in blocked._plans if p} == {torch.bfloat16}
    for weights in ([0.2, 0.5, 0.3], [0.6, 0.1, 0.3]):
        blocked.set_weights(weights)
        streamed.set_weights(weights)
    want, got = streamed.state_dict(), blocked.state_dict()
    for name in blocked.stacked:
        torch.testing.assert_close(got[name].float(), want[name].float(), atol=1e-2, rtol=1e-2, msg=name)
