"""The merge methods as pure functions: whole tensors vs row blocks, DARE masks, TIES thresholds."""

from __future__ import annotations

import pytest
import torch
from merge_reference import ref_task_vectors, ref_topk

from hf_recycle._merge import methods
from hf_recycle._merge.methods import METHODS, MethodParams, Workspace, get_method, resolve_params
from hf_recycle.errors import MergeConfigError


def _inputs(seed=0, shape=(37, 11), n=3, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=gen)
    tensors = [(base + 0.1 * torch.randn(shape, generator=gen)).to(dtype) for _ in range(n)]
    return tensors, base.to(dtype)


def _blockwise(method, tensors, weights, base, params, key, rows_per_block):
    """Combine in row blocks the way the engine does (stats from whole tensors first)."""
    stats = None
    if method.needs_stats(params):
        stats = method.tensor_stats([(t.float() - base.float()).abs() for t in tensors], params)
    out = torch.empty(tensors[0].shape)
    ws = Workspace()
    for start in range(0, tensors[0].shape[0], rows_per_block):
        rows = slice(start, min(start + rows_per_block, tensors[0].shape[0]))
        method.combine(
            [t[rows] for t in tensors], weights, base[rows] if base is not None else None, params, key,
            rows=rows, numel=tensors[0].numel(), stats=stats, out=out[rows], workspace=ws,
        )  # fmt: skip
    return out


def test_registry_metadata():
    built_in = ("linear", "task_arithmetic", "ties", "dare_linear", "dare_ties")
    assert set(built_in) <= set(METHODS)  # (a method added since is one more module and its own test)
    for method in METHODS.values():
        assert method.pretty_name and method.reference_url.startswith("https://")
    assert not METHODS["linear"].needs_base and METHODS["ties"].needs_base
    # mergekit's defaults
    assert {n: METHODS[n].default_normalize for n in built_in} == {
        "linear": True, "task_arithmetic": False, "ties": True, "dare_linear": False, "dare_ties": False,
    }  # fmt: skip
    with pytest.raises(MergeConfigError, match="unknown merge method 'slerp'"):
        get_method("slerp")


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5])
def test_density_outside_range_is_refused(density):
    with pytest.raises(MergeConfigError, match=r"density must be in \(0, 1\]"):
        resolve_params(METHODS["ties"], density=density)


def test_density_for_linear_is_refused():
    with pytest.raises(MergeConfigError, match="does not apply to method 'linear'"):
        resolve_params(METHODS["linear"], density=0.5)


def test_linear_whole_tensor():
    tensors, _ = _inputs(dtype=torch.bfloat16)
    got = METHODS["linear"].combine(tensors, [1.0, 2.0, 3.0], None, MethodParams(), "w")
    want = sum(w * t.float() for w, t in zip([1.0, 2.0, 3.0], tensors, strict=True)) / 6.0
    torch.testing.assert_close(got, want)
    got = METHODS["linear"].combine(tensors, [1.0, 2.0, 3.0], None, MethodParams(normalize=False), "w")
    torch.testing.assert_close(got, want * 6.0)


@pytest.mark.parametrize("name", ["task_arithmetic", "ties"])
@pytest.mark.parametrize("normalize", [False, True])
def test_task_vector_methods_whole_tensor(name, normalize):
    tensors, base = _inputs()
    weights = [0.5, -0.2, 0.9]
    params = MethodParams(density=0.3, lambda_=0.7, normalize=normalize)
    got = METHODS[name].combine(tensors, weights, base, params, "w")
    states = [{"w": t} for t in tensors]
    want = ref_task_vectors(
        states, {"w": base}, weights, lam=0.7, normalize=normalize, consensus=name == "ties",
        sparsify=(lambda d, i, k: ref_topk(d, 0.3)) if name == "ties" else None,
    )["w"]  # fmt: skip
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("rows_per_block", [1, 5, 37])
def test_row_blocks_equal_whole_tensor(name, rows_per_block):
    tensors, base = _inputs(seed=3)
    params = MethodParams(density=0.4, lambda_=1.3, normalize=True, seed=7)
    method = METHODS[name]
    whole = method.combine(tensors, [0.2, 0.3, 0.5], base, params, "layer.weight")
    blocks = _blockwise(method, tensors, [0.2, 0.3, 0.5], base, params, "layer.weight", rows_per_block)
    torch.testing.assert_close(blocks, whole, atol=0, rtol=0)


def test_ties_keeps_exactly_k_with_ties_at_the_threshold():
    delta = torch.tensor([[0.5, -1.0, 0.5], [0.5, 2.0, -0.5], [0.1, 0.5, 0.0]])
    thr = methods.magnitude_threshold(delta.abs(), 0.5)  # k = 4: 2.0, -1.0 and the |0.5| at flat 0 and 2
    assert thr == methods.KeepThreshold(0.5, 2)
    kept = delta.clone()
    methods.apply_threshold(kept, thr, 0)
    torch.testing.assert_close(kept, ref_topk(delta, 0.5))
    assert int((kept != 0).sum()) == 4
    # density so small that floor() is 0 still keeps one entry
    assert int((ref_topk(delta, 1e-6) != 0).sum()) == 1
    kept = delta.clone()
    methods.apply_threshold(kept, methods.magnitude_threshold(delta.abs(), 1e-6), 0)
    assert kept.abs().max() == 2.0 and int((kept != 0).sum()) == 1


def test_dare_mask_is_reproducible_and_independent_of_slicing():
    full = methods.dare_keep_mask(1, "k", 0, 3_000_000, 0, 3_000_000, 0.3)
    assert abs(full.float().mean().item() - 0.3) < 0.01
    part = methods.dare_keep_mask(1, "k", 0, 3_000_000, 1_048_000, 1_000_123, 0.3)
    assert torch.equal(part, full[1_048_000:2_048_123])
    assert torch.equal(full, methods.dare_keep_mask(1, "k", 0, 3_000_000, 0, 3_000_000, 0.3))
    assert not torch.equal(full, methods.dare_keep_mask(2, "k", 0, 3_000_000, 0, 3_000_000, 0.3))
    assert not torch.equal(full, methods.dare_keep_mask(1, "k", 1, 3_000_000, 0, 3_000_000, 0.3))
    assert not torch.equal(full, methods.dare_keep_mask(1, "j", 0, 3_000_000, 0, 3_000_000, 0.3))


@pytest.mark.parametrize("name", ["dare_linear", "dare_ties"])
def test_dare_against_reference(name):
    tensors, base = _inputs(seed=5, shape=(64, 32))
    weights = [0.3, 0.3, 0.4]
    params = MethodParams(density=0.25, lambda_=1.0, normalize=False, seed=3)
    got = METHODS[name].combine(tensors, weights, base, params, "w")

    def drop(d, i, key):
        mask = methods.dare_keep_mask(3, key, i, d.numel(), 0, d.numel(), 0.25).view_as(d)
        return d * mask / 0.25

    want = ref_task_vectors(
        [{"w": t} for t in tensors], {"w": base}, weights, consensus=name == "dare_ties", sparsify=drop
    )["w"]
    torch.testing.assert_close(got, want)
    # about a quarter of each task vector survives
    kept = (METHODS["dare_linear"].combine(tensors[:1], [1.0], base, params, "w") - base) != 0
    assert 0.15 < kept.float().mean().item() < 0.35
