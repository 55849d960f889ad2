"""The resident model keeps LoRA adapters as base + factors, and its candidates equal the dense path's."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_recycle._merge.engine import merge
from hf_recycle._merge.inputs import open_inputs
from hf_recycle._merge.lora import LoraSource
from hf_recycle._search.resident import ResidentModel
from hf_recycle._search.space import group_tensors
from hf_recycle.testing import models

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ADAPTERS = {
    # an embedding target, rank_pattern/alpha_pattern, modules_to_save (a tensor saved whole)
    "a": dict(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "embed_tokens", "down_proj"],
        rank_pattern={"v_proj": 2},
        alpha_pattern={"down_proj": 3},
        modules_to_save=["lm_head"],
        seed=11,
    ),
    "b": dict(r=8, lora_alpha=4, target_modules=["q_proj", "o_proj", "gate_proj"], use_rslora=True, seed=12),
    "c": dict(r=2, lora_alpha=2, target_modules=["q_proj", "k_proj", "down_proj"], seed=13),
    # GPT-2: Conv1D (fan_in_fan_out), trained biases, the tied token embedding
    "g": dict(
        r=4,
        lora_alpha=8,
        target_modules=["c_attn", "c_proj", "wte"],
        fan_in_fan_out=True,
        bias="all",
        seed=21,
    ),
    "h": dict(r=2, lora_alpha=4, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True, seed=22),
}
POOLS = {
    "adapters": (["a", "b", "c"], "llama"),
    "mixed": (["a", "llama_full", "b"], "llama"),
    "gpt2-mixed": (["g", "gpt2_full", "h"], "gpt2"),
}


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    """Llama and GPT-2 bases, one full fine-tune each, and real peft adapters over them."""
    root = tmp_path_factory.mktemp("resident-lora")
    paths: dict[str, Path] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths["llama"], (paths["llama_full"],) = models.build_pool(root / "llama", "llama", n=1, seed=5)
        paths["gpt2"], (paths["gpt2_full"],) = models.build_pool(root / "gpt2", "gpt2", n=1, seed=6)
        for name, kwargs in ADAPTERS.items():
            base = paths["gpt2" if name in ("g", "h") else "llama"]
            paths[name] = models.build_lora_adapter(base, root / f"lora-{name}", **kwargs)
    return paths


def _resident(env, names, arch, method, **kwargs):
    inputs = open_inputs([str(env[n]) for n in names], base=str(env[arch]))
    return ResidentModel(inputs.checkpoints, base=inputs.base, method=method, device="cpu", **kwargs)


def _assert_same(live, expected, atol, what):
    assert set(live) <= set(expected)
    for key, tensor in live.items():
        assert tensor.dtype == expected[key].dtype, (what, key)
        torch.testing.assert_close(
            tensor.float(), expected[key].float(), atol=atol, rtol=0, msg=f"{what}: {key}"
        )


CASES = [
    ("linear", {}),
    ("linear", {"normalize": False}),
    ("task_arithmetic", {"lambda_": 0.8}),
    ("task_arithmetic", {"lambda_": 0.7, "normalize": True}),
    ("ties", {"density": 0.5}),
    ("dare_linear", {"density": 0.6, "seed": 3}),
    ("dare_ties", {"density": 0.7, "seed": 4}),
]


@pytest.mark.parametrize("pool", list(POOLS))
@pytest.mark.parametrize(("method", "kwargs"), CASES)
def test_factor_candidates_equal_dense_and_streaming_merge(env, tmp_path, pool, method, kwargs):
    names, arch = POOLS[pool]
    weights = [0.6, 0.3, 0.4] if kwargs.get("normalize") is False else [0.5, 0.3, 0.2]
    density = kwargs.get("density")
    opts = {k: v for k, v in kwargs.items() if k != "density"}
    factor = _resident(env, names, arch, method, **opts)
    dense = _resident(env, names, arch, method, low_rank=False, **opts)
    assert factor.resident_bytes < dense.resident_bytes
    for resident in (factor, dense):
        # a first, different candidate: nothing of it may leak into the next one
        resident.set_weights([0.1, 0.1, 0.8], density)
        resident.set_weights(weights, density)
    merge(
        [str(env[n]) for n in names],
        tmp_path / "merged",
        method=method,
        weights=weights,
        base=str(env[arch]),
        device="cpu",
        **kwargs,
    )
    streamed = models.load_state_dict(tmp_path / "merged")
    _assert_same(dense.state_dict(), streamed, 1e-5, "dense")
    _assert_same(factor.state_dict(), streamed, 1e-5, "factors")
    _assert_same(factor.state_dict(), dense.state_dict(), 1e-5, "factors vs dense")
    # not vacuous: the candidate moved away from the base on the tensors the inputs change
    base = models.load_state_dict(env[arch])
    moved = [k for k in factor.stacked if (factor.state_dict()[k] - base[k]).abs().max() > 1e-3]
    assert len(moved) >= 4


def test_per_layer_weights_with_adapters(env):
    names, arch = POOLS["mixed"]
    inputs = open_inputs([str(env[n]) for n in names], base=str(env[arch]))
    groups, group_of = group_tensors(inputs.checkpoints[0].keys(), 1)
    w = np.random.default_rng(0).uniform(0.1, 1.0, size=(len(groups), 3))
    for method in ("linear", "task_arithmetic", "ties"):
        factor = _resident(env, names, arch, method, group_of=group_of)
        dense = _resident(env, names, arch, method, group_of=group_of, low_rank=False)
        factor.set_weights(w, 0.5)
        dense.set_weights(w, 0.5)
        _assert_same(factor.state_dict(), dense.state_dict(), 1e-5, method)


def _targeted(sources: list[LoraSource]) -> set[str]:
    return {key for src in sources for key in src.keys() if src.changes(key)}


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties"])
def test_adapter_pool_holds_the_base_once_plus_factors(env, method):
    names = ["b", "c"]  # LoRA targets only (nothing saved whole)
    inputs = open_inputs([str(env[n]) for n in names], base=str(env["llama"]))
    resident = ResidentModel(inputs.checkpoints, base=inputs.base, method=method, device="cpu")
    targeted = _targeted(inputs.checkpoints)
    # tensors no adapter changes are not kept: only the targeted ones are
    assert set(resident.stacked) == targeted
    assert 0 < len(targeted) < len(resident.names)
    # expected bytes from the shapes alone: one float32 base copy per targeted tensor + every A and B
    base = models.load_state_dict(env["llama"])
    expected = sum(base[k].numel() * 4 for k in targeted)
    for src in inputs.checkpoints:
        for key, mod in src.modules.items():
            rows, cols = base[key].shape
            expected += mod.rank * (rows + cols) * 4
    assert resident.resident_bytes == expected
    model_bytes = sum(t.numel() * t.element_size() for t in base.values())
    n_rows = 2 + (method != "linear")  # the adapters, then the base of task-vector methods
    # the dense path holds every row of every tensor (ranks 2-8 of a 32-wide model are not small)
    assert resident.resident_bytes < model_bytes < n_rows * model_bytes
    dense = ResidentModel(inputs.checkpoints, base=inputs.base, method=method, device="cpu", low_rank=False)
    assert dense.resident_bytes == n_rows * model_bytes
    # and the untouched tensors are the base's, exactly
    live = resident.state_dict()
    for key in set(resident.names) - targeted:
        assert torch.equal(live[key], base[key]), key


@pytest.mark.parametrize(
    ("method", "kwargs"), [("linear", {}), ("task_arithmetic", {"lambda_": 0.8}), ("ties", {"density": 0.5})]
)
def test_bf16_base_keeps_bf16_copies(tmp_path_factory, tmp_path, method, kwargs):
    root = tmp_path_factory.mktemp("bf16-lora")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base, _ = models.build_pool(root / "llama", "llama", n=0, seed=7, dtype=torch.bfloat16)
        adapters = [
            models.build_lora_adapter(
                base, root / f"lora-{i}", seed=30 + i, target_modules=["q_proj", "down_proj"]
            )
            for i in range(2)
        ]
    env = {"base": base, "x": adapters[0], "y": adapters[1]}
    density = kwargs.get("density")
    opts = {k: v for k, v in kwargs.items() if k != "density"}
    factor = _resident(env, ["x", "y"], "base", method, **opts)
    dense = _resident(env, ["x", "y"], "base", method, low_rank=False, **opts)
    assert factor.dtype == torch.bfloat16
    for plan in factor._plans:
        assert plan is None or plan.stack.dtype == torch.bfloat16  # the base copy as stored, not float32
    for resident in (factor, dense):
        resident.set_weights([0.7, 0.4], density)
    merge([str(p) for p in adapters], tmp_path / "m", method=method, weights=[0.7, 0.4], base=str(base),
          device="cpu", **kwargs)  # fmt: skip
    streamed = models.load_state_dict(tmp_path / "m")
    # bf16: sums in float32 then one rounding; a different summation order may flip the last bit
    _assert_same(factor.state_dict(), dense.state_dict(), 1e-2, "factors vs dense")
    _assert_same(factor.state_dict(), streamed, 1e-2, "factors vs streaming")


@pytest.mark.parametrize("pool", list(POOLS))
@pytest.mark.parametrize("sums_to_one", [True, False])
def test_header_only_varying_keys_agree_with_the_tensor_plans(env, pool, sums_to_one):
    """The plan and the disk tier's header-only rule name exactly the tensors ResidentModel keeps."""
    from hf_recycle._search.lora_candidate import TensorPlan, varying_keys

    names, arch = POOLS[pool]
    inputs = open_inputs([str(env[n]) for n in names], base=str(env[arch]))
    keys = inputs.checkpoints[0].keys()
    for rows in (inputs.checkpoints, [*inputs.checkpoints, inputs.base]):  # linear, task vectors
        kept = {k for k in keys if not TensorPlan(k, rows).is_fixed(sums_to_one)}
        assert varying_keys(inputs.checkpoints, keys, sums_to_one) == kept
        assert kept != set(keys) or pool != "adapters" or not sums_to_one  # not vacuous for adapters
