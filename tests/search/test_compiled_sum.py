"""The compiled one-pass weighted sum (``torch.compile``) of the resident tier, against eager torch."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import TargetMixtureScorer, synthetic_recipe

from hf_recycle._merge import fused
from hf_recycle._merge.inputs import open_inputs
from hf_recycle._merge.sources import SafetensorsSource
from hf_recycle._search.api import search
from hf_recycle._search.memory import plan_memory
from hf_recycle._search.resident import ResidentModel
from hf_recycle.errors import MergeConfigError
from hf_recycle.testing import models

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

STEP = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> tuple[Path, list[Path], Path]:
    """A bfloat16 Llama wide enough that most tensors take the compiled sum, 3 fine-tunes, an adapter."""
    root = tmp_path_factory.mktemp("compiled-sum")
    wide = {"hidden_size": 64, "intermediate_size": 128}
    base, ckpts = models.build_pool(root, "llama", n=3, seed=7, dtype=torch.bfloat16, config_overrides=wide)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapter = models.build_lora_adapter(
            base, root / "lora", r=4, target_modules=["q_proj", "gate_proj"], seed=8
        )
    return base, ckpts, adapter


@pytest.fixture
def spy(monkeypatch) -> list[bool]:
    """What each call of the compiled sum returned (True: it wrote the sum)."""
    calls: list[bool] = []
    real = fused.weighted_sum

    def recorded(*args):
        calls.append(real(*args))
        return calls[-1]

    monkeypatch.setattr(fused, "weighted_sum", recorded)
    return calls


def _within_one_step(
    got: torch.Tensor, want: torch.Tensor, what: str, atol: float | torch.Tensor = 0.0
) -> None:
    """``got`` within one rounding step of ``got``'s dtype of ``want`` (the sums' order differs),
    plus ``atol`` (float32 sums that cancel out: their rounding, absolute)."""
    step = STEP[got.dtype]
    err = (got.double() - want.double()).abs()
    bound = want.double().abs() * step + atol + 1e-30
    assert bool((err <= bound).all()), f"{what}: off by {float((err / bound).max()):.2f} steps"


@pytest.mark.parametrize(
    ("k", "row_dtype", "out_dtype"),
    [
        (2, torch.bfloat16, torch.float32),
        (5, torch.bfloat16, torch.bfloat16),
        (4, torch.float16, torch.float16),
        (5, torch.float16, torch.float32),
    ],
)
def test_sum_matches_a_float64_reference(k, row_dtype, out_dtype):
    gen = torch.Generator().manual_seed(k)
    stack = torch.randn(k, 96, 160, generator=gen).to(row_dtype).view(k, -1)  # 15,360 per row
    weights = torch.rand(k, generator=gen) - 0.2  # a negative coefficient too
    exact = (stack.double() * weights.double()[:, None]).sum(0)
    # float32 sums that cancel err by about k rounding steps of the terms' magnitude
    magnitude = (stack.double() * weights.double()[:, None]).abs().sum(0)
    n = stack.shape[1]
    for start, stop in ((0, n), (4096 + 7, n - 3)):  # whole rows, then views at offsets
        out = torch.full((stop - start,), 7.0, dtype=out_dtype)
        assert fused.weighted_sum(out, [stack[i, start:stop] for i in range(k)], weights)
        want, atol = exact[start:stop], magnitude[start:stop] * k * 2.0**-23
        if out_dtype == torch.float32:
            assert bool(((out.double() - want).abs() <= atol).all())
        else:
            _within_one_step(out, want, f"k={k} {row_dtype} -> {out_dtype}", atol)


def test_sum_declines_what_it_does_not_take():
    rows = [torch.randn(8192).bfloat16() for _ in range(3)]
    weights = torch.tensor([0.2, 0.3, 0.5])
    cases = {
        "short rows": ([r[:100] for r in rows], torch.empty(100)),
        "float32 rows": ([r.float() for r in rows], torch.empty(8192)),
        "mixed dtypes": ([rows[0], rows[1].half(), rows[2]], torch.empty(8192)),
        "strided rows": ([torch.randn(16384).bfloat16()[::2] for _ in range(3)], torch.empty(8192)),
        "2-D out": (rows, torch.empty(64, 128)),
        "lengths differ": ([rows[0], rows[1][:4096], rows[2]], torch.empty(8192)),
    }
    for what, (given, out) in cases.items():
        before = out.clone()
        assert not fused.weighted_sum(out, given, weights), what
        assert torch.equal(out, before) or torch.isnan(before).any(), f"{what}: out was written"
    assert not fused.weighted_sum(torch.empty(8192), rows, weights.double())  # float64 coefficients


def test_compile_failure_falls_back_to_eager_with_one_warning(pool, monkeypatch, caplog, spy):
    base, ckpts, _ = pool

    def no_compiler(k):
        raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")

    monkeypatch.setattr(fused, "_failed", False)
    monkeypatch.setattr(fused, "_function", no_compiler)
    made = [
        ResidentModel([SafetensorsSource(p) for p in ckpts], device="cpu", compiled_sum=c)
        for c in (True, False)
    ]
    with caplog.at_level(logging.WARNING, logger="hf_recycle._merge.fused"):
        for model in made:
            model.set_weights([0.5, 0.3, 0.2])
            model.set_weights([0.1, 0.2, 0.7])
    warned = [r for r in caplog.records if "compiling the candidates' weighted sum failed" in r.getMessage()]
    assert len(warned) == 1 and "HF_RECYCLE_COMPILE=0" in warned[0].getMessage()
    assert "InvalidCxxCompiler" in warned[0].getMessage()
    assert spy and not any(spy)  # tried once, then declined without trying again
    got, want = made[0].state_dict(), made[1].state_dict()
    for name in made[0].names:  # the eager path itself: equal
        assert torch.equal(got[name], want[name]), name


@pytest.mark.parametrize(
    ("method", "kwargs", "with_adapter", "host_chunk"),
    [
        ("linear", {}, False, None),
        ("linear", {"normalize": False}, False, None),
        ("task_arithmetic", {"lambda_": 0.8}, False, None),
        ("linear", {}, True, None),  # an adapter's deltas: the sum goes through the float32 buffer
        # the host tier's chunks (its copy pipeline runs on the CPU when a chunk size is given)
        ("linear", {}, False, 4096 + 64),
        ("linear", {}, True, 8192),
    ],
)
def test_resident_candidates_equal_the_eager_ones(pool, spy, method, kwargs, with_adapter, host_chunk):
    base, ckpts, adapter = pool
    paths = [str(ckpts[0]), str(adapter), str(ckpts[1])] if with_adapter else [str(p) for p in ckpts]
    made = []
    for compiled in (True, False):
        inputs = open_inputs(paths, base=str(base))
        made.append(
            ResidentModel(
                inputs.checkpoints,
                base=inputs.base,
                method=method,
                device="cpu",
                compiled_sum=compiled,
                host_chunk=host_chunk,
                **kwargs,
            )
        )
    compiled, eager = made
    assert compiled.dtype == torch.bfloat16
    for weights in ([0.5, 0.3, 0.2], [0.1, 0.1, 0.8]):
        spy.clear()
        compiled.set_weights(weights)
        eager.set_weights(weights)
        assert sum(spy) >= 8, "the compiled sum was not used"
        got, want = compiled.state_dict(), eager.state_dict()
        differ = 0
        for name in compiled.names:
            _within_one_step(got[name], want[name], name, atol=1e-7)  # float32 sums that cancel
            differ += int((got[name] != want[name]).sum())
        total = sum(got[n].numel() for n in compiled.names)
        assert differ < 0.05 * total  # the same sums but for rounding, not another candidate
    # the live model the scorers run holds the candidate
    live = dict(compiled.model.named_parameters())
    assert torch.equal(live[compiled.names[0]], compiled.state_dict()[compiled.names[0]])


def test_compile_setting_from_the_environment(monkeypatch):
    for value, setting in [
        ("", "auto"),
        ("auto", "auto"),
        ("1", "always"),
        ("true", "always"),
        ("0", "never"),
    ]:
        monkeypatch.setenv(fused.COMPILE_ENV, value)
        assert fused.compile_setting() == setting
    monkeypatch.setenv(fused.COMPILE_ENV, "sometimes")
    with pytest.raises(MergeConfigError, match="HF_RECYCLE_COMPILE='sometimes'.*auto.*1.*0"):
        fused.compile_setting()
    monkeypatch.delenv(fused.COMPILE_ENV)
    assert fused.wanted(fused.COMPILE_MIN_BYTES) and not fused.wanted(fused.COMPILE_MIN_BYTES - 1)
    monkeypatch.setenv(fused.COMPILE_ENV, "0")
    assert not fused.wanted(10 * fused.COMPILE_MIN_BYTES)
    monkeypatch.setenv(fused.COMPILE_ENV, "1")
    assert fused.wanted(0)


def test_plan_says_when_the_sum_is_compiled(pool, monkeypatch):
    base, ckpts, _ = pool
    sources = [SafetensorsSource(p) for p in ckpts]
    bf16 = sum(s.nbytes(k) for s in sources for k in s.keys() if s.dtype(k) == torch.bfloat16)

    def plan(**kwargs):
        return plan_memory(sources, None, method="linear", device="cpu", memory_limit="10GB", **kwargs)

    monkeypatch.delenv(fused.COMPILE_ENV, raising=False)
    auto = plan()
    assert auto.needs.sum_bytes == bf16 > 0
    assert not auto.compiled_sum and "weighted sums: eager" in auto.describe()  # a small pool: not worth it
    monkeypatch.setenv(fused.COMPILE_ENV, "1")
    forced = plan()
    assert forced.compiled_sum and "weighted sums: compiled (torch.compile)" in forced.describe()
    assert not plan(resident="disk").compiled_sum  # the disk tier sums in the merge engine, eagerly
    # with a GPU: the host tier's chunks are summed on the CPU, the device tier's stacks on the GPU
    on_gpu = dict(method="linear", device="cuda", memory_limit="10GB")
    assert plan_memory(sources, None, resident="host", gpu_free=10**10, **on_gpu).compiled_sum
    assert not plan_memory(sources, None, resident="device", gpu_free=10**10, **on_gpu).compiled_sum
    ties = plan_memory(
        sources, SafetensorsSource(base), method="ties", density=0.5, device="cpu", memory_limit="10GB"
    )
    assert ties.needs.sum_bytes == 0 and not ties.compiled_sum  # no weighted sum to compile
    monkeypatch.setenv(fused.COMPILE_ENV, "maybe")
    with pytest.raises(MergeConfigError, match="HF_RECYCLE_COMPILE"):
        plan()


def test_search_with_the_compiled_sum_finds_the_same_winner(pool, tmp_path, monkeypatch, spy, caplog):
    _, ckpts, _ = pool
    scorers = [TargetMixtureScorer("mix", ckpts, [0.6, 0.3, 0.1])]
    results = {}
    for setting in ("1", "0"):
        monkeypatch.setenv(fused.COMPILE_ENV, setting)
        spy.clear()
        caplog.clear()
        recipe = synthetic_recipe(ckpts, tmp_path / setting, trials=6, sampler="random")
        with caplog.at_level(logging.INFO, logger="hf_recycle._search"):
            results[setting] = search(recipe, scorers=scorers, test_scorers=scorers, n_boot=20)
        assert ("weighted sums: compiled" in caplog.text) == (setting == "1")
        assert any(spy) == (setting == "1")
    compiled, eager = results["1"], results["0"]
    assert compiled["trials"] == eager["trials"] == 6
    assert compiled["winner"]["weights"] == eager["winner"]["weights"]
    np.testing.assert_allclose(
        compiled["winner"]["search"]["mean"], eager["winner"]["search"]["mean"], rtol=0.05
    )
