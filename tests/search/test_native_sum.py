"""The native one-pass weighted sum (:mod:`hf_recycle._merge.fused`) against eager torch.

It claims the eager arithmetic bit for bit, so the checks are ``torch.equal``: the kernel on its
own, the merge engine (``hf-recycle merge`` and the disk tier), the resident tiers and a search.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from synthetic import TargetMixtureScorer, synthetic_recipe

from hf_recycle._merge import fused
from hf_recycle._merge.engine import merge
from hf_recycle._merge.inputs import open_inputs
from hf_recycle._merge.sources import SafetensorsSource
from hf_recycle._search.api import search
from hf_recycle._search.memory import plan_memory
from hf_recycle._search.resident import ResidentModel
from hf_recycle._search.streamed import StreamedModel
from hf_recycle.errors import MergeConfigError, NonFiniteError
from hf_recycle.testing import models

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> tuple[Path, list[Path], Path]:
    """A bfloat16 Llama wide enough that most tensors take the native sum, 3 fine-tunes, an adapter."""
    root = tmp_path_factory.mktemp("native-sum")
    wide = {"hidden_size": 64, "intermediate_size": 128}
    base, ckpts = models.build_pool(root, "llama", n=3, seed=7, dtype=torch.bfloat16, config_overrides=wide)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapter = models.build_lora_adapter(
            base, root / "lora", r=4, target_modules=["q_proj", "gate_proj"], seed=8
        )
    return base, ckpts, adapter


@pytest.fixture(autouse=True)
def compiled():
    """Every test here needs the kernel: this machine has a C compiler (CI's too)."""
    assert fused.available(), "the native sum did not build: see the warning"


@pytest.fixture
def spy(monkeypatch) -> list[int | None]:
    """What each call of the native sum returned (``None``: it declined)."""
    calls: list[int | None] = []
    real = fused.weighted_sum

    def recorded(*args, **kwargs):
        calls.append(real(*args, **kwargs))
        return calls[-1]

    monkeypatch.setattr(fused, "weighted_sum", recorded)
    return calls


def _eager(
    rows: list[torch.Tensor], weights: list[float], divisor: float, dtype: torch.dtype
) -> torch.Tensor:
    """What the merge methods do in eager torch: x₀·w₀, += xᵢ·wᵢ, ÷ divisor, in float32, then cast."""
    out = rows[0].float()
    out.mul_(weights[0])
    for row, weight in zip(rows[1:], weights[1:], strict=True):
        out.add_(row, alpha=weight)
    if divisor != 1.0:
        out.div_(divisor)
    return out.to(dtype)


@pytest.mark.parametrize(
    ("k", "row_dtype", "out_dtype", "divisor"),
    [
        (1, torch.bfloat16, torch.bfloat16, 1.0),
        (2, torch.bfloat16, torch.float32, 1.0),
        (5, torch.bfloat16, torch.bfloat16, 1.7),
        (4, torch.float16, torch.float16, 0.9),
        (5, torch.float16, torch.float32, 1.0),
    ],
)
def test_sum_equals_eager_torch_bit_for_bit(k, row_dtype, out_dtype, divisor, monkeypatch):
    gen = torch.Generator().manual_seed(k)
    stack = (torch.randn(k, 96, 160, generator=gen) * 4).to(row_dtype).view(k, -1)  # 15,360 per row
    weights = [float(w) for w in torch.rand(k, generator=gen) - 0.2]  # a negative coefficient too
    n = stack.shape[1]
    monkeypatch.setattr(fused, "CHUNK_ELEMENTS", 4096 + 64)  # pieces shared by threads, on rows this short
    for start, stop in ((0, n), (4096 + 7, n - 3)):  # whole rows, then views at odd offsets
        rows = [stack[i, start:stop] for i in range(k)]
        want = _eager(rows, weights, divisor, out_dtype)
        for threads in (1, 3):
            out = torch.full((stop - start,), 7.0, dtype=out_dtype)
            assert fused.weighted_sum(out, rows, weights, divisor, threads=threads) == 0
            assert torch.equal(out, want), f"k={k} {row_dtype} -> {out_dtype}, {threads} thread(s)"


@pytest.mark.parametrize("row_dtype", [torch.bfloat16, torch.float16])
def test_nan_and_overflow_are_reported(row_dtype):
    n = 4096 + 37  # a vector part and a scalar tail
    big = torch.finfo(row_dtype).max
    for where in (5, n - 2):
        rows = [torch.randn(n).to(row_dtype) for _ in range(3)]
        assert fused.weighted_sum(torch.empty(n, dtype=row_dtype), rows, [0.2, 0.3, 0.5]) == 0
        rows[1][where] = float("nan")
        for out_dtype in (torch.float32, row_dtype):
            assert fused.weighted_sum(torch.empty(n, dtype=out_dtype), rows, [0.2, 0.3, 0.5]) == 1
        rows[1][where] = big
        rows[2][where] = big  # the sum overflows the rows' dtype (and float32 for bfloat16's range)
        assert fused.weighted_sum(torch.empty(n, dtype=row_dtype), rows, [0.2, 1.0, 1.0]) == 1
        wide = torch.empty(n)
        if row_dtype == torch.float16:  # finite in float32
            assert fused.weighted_sum(wide, rows, [0.2, 1.0, 1.0]) == 0 and float(wide[where]) > big
        else:
            assert fused.weighted_sum(wide, rows, [0.2, 1.0, 1.0]) == 1


def test_sum_declines_what_it_does_not_take():
    rows = [torch.randn(8192).bfloat16() for _ in range(3)]
    weights = [0.2, 0.3, 0.5]
    cases = {
        "short rows": ([r[:100] for r in rows], torch.empty(100), weights),
        "float32 rows": ([r.float() for r in rows], torch.empty(8192), weights),
        "mixed dtypes": ([rows[0], rows[1].half(), rows[2]], torch.empty(8192), weights),
        "float16 out of bfloat16 rows": (rows, torch.empty(8192, dtype=torch.float16), weights),
        "strided rows": ([torch.randn(16384).bfloat16()[::2] for _ in range(3)], torch.empty(8192), weights),
        "2-D out": (rows, torch.empty(64, 128), weights),
        "lengths differ": ([rows[0], rows[1][:4096], rows[2]], torch.empty(8192), weights),
        "a weight missing": (rows, torch.empty(8192), weights[:2]),
    }
    for what, (given, out, w) in cases.items():
        before = out.clone()
        assert fused.weighted_sum(out, given, w) is None, what
        assert torch.equal(out, before) or torch.isnan(before).any(), f"{what}: out was written"


@pytest.mark.parametrize(
    ("compiler", "cause"), [("/nonexistent/cc", "No such file"), ("false", "false failed")]
)
def test_a_compiler_that_fails_means_eager_with_one_warning(pool, monkeypatch, caplog, spy, compiler, cause):
    base, ckpts, _ = pool
    monkeypatch.setattr(fused, "_library", None)
    monkeypatch.setattr(fused, "_failed", False)
    monkeypatch.setenv("CC", compiler)
    made = [
        ResidentModel([SafetensorsSource(p) for p in ckpts], device="cpu", compiled_sum=c)
        for c in (True, False)
    ]
    with caplog.at_level(logging.WARNING, logger="hf_recycle._merge.fused"):
        for model in made:
            model.set_weights([0.5, 0.3, 0.2])
            model.set_weights([0.1, 0.2, 0.7])
    warned = [r for r in caplog.records if "compiling the native weighted sum failed" in r.getMessage()]
    assert len(warned) == 1 and "HF_RECYCLE_COMPILE=0" in warned[0].getMessage()
    assert cause in warned[0].getMessage()
    assert spy and all(c is None for c in spy)  # tried once, then declined without trying again
    got, want = made[0].state_dict(), made[1].state_dict()
    for name in made[0].names:  # the eager path itself
        assert torch.equal(got[name], want[name]), name


def _sum_in_a_forked_child(queue) -> None:
    torch.set_num_threads(1)  # torch's own OpenMP threads do not survive a fork either
    rows = [torch.full((3 * fused.CHUNK_ELEMENTS,), float(i), dtype=torch.bfloat16) for i in range(3)]
    out = torch.empty(3 * fused.CHUNK_ELEMENTS, dtype=torch.bfloat16)
    queue.put((fused.weighted_sum(out, rows, [1.0, 1.0, 1.0], threads=2), float(out.float().mean())))


def test_a_forked_child_shares_sums_with_threads_of_its_own():
    import multiprocessing

    rows = [torch.ones(3 * fused.CHUNK_ELEMENTS, dtype=torch.bfloat16)] * 2
    assert fused.weighted_sum(torch.empty(3 * fused.CHUNK_ELEMENTS), rows, [1.0, 2.0], threads=2) == 0
    context = multiprocessing.get_context("fork")  # the parent's helper threads do not exist in the child
    queue = context.Queue()
    child = context.Process(target=_sum_in_a_forked_child, args=(queue,))
    child.start()
    try:
        assert queue.get(timeout=120) == (0, 3.0)  # no answer: the child waits on a thread it lacks
    finally:
        child.kill()
        child.join()


def test_compiling_leaves_nothing_behind(monkeypatch, tmp_path):
    monkeypatch.setattr(fused, "_library", None)
    monkeypatch.setattr(fused, "_failed", False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert fused.available()
    assert list(tmp_path.iterdir()) == []  # the source and the library were removed once loaded
    rows = [torch.ones(8192, dtype=torch.bfloat16)] * 2
    out = torch.empty(8192, dtype=torch.bfloat16)
    assert fused.weighted_sum(out, rows, [0.25, 0.5]) == 0 and bool((out == 0.75).all())


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
    for native in (True, False):
        inputs = open_inputs(paths, base=str(base))
        made.append(
            ResidentModel(
                inputs.checkpoints,
                base=inputs.base,
                method=method,
                device="cpu",
                compiled_sum=native,
                host_chunk=host_chunk,
                **kwargs,
            )
        )
    native, eager = made
    assert native.dtype == torch.bfloat16
    for weights in ([0.5, 0.3, 0.2], [0.1, 0.1, 0.8]):
        spy.clear()
        native.set_weights(weights)
        eager.set_weights(weights)
        assert sum(c is not None for c in spy) >= 8, "the native sum was not used"
        got, want = native.state_dict(), eager.state_dict()
        for name in native.names:
            assert torch.equal(got[name], want[name]), name
    # the live model the scorers run holds the candidate
    live = dict(native.model.named_parameters())
    assert torch.equal(live[native.names[0]], native.state_dict()[native.names[0]])


@pytest.mark.parametrize(
    ("method", "options", "with_adapter", "dtype"),
    [
        ("linear", {}, False, "auto"),
        ("linear", {"normalize": False}, False, "auto"),
        ("linear", {}, False, "float32"),  # bfloat16 rows summed straight into float32 blocks
        ("linear", {}, True, "auto"),  # the adapter's deltas added to the float32 sum
        ("task_arithmetic", {"lambda_": 0.7}, False, "auto"),
    ],
)
def test_merge_with_the_native_sum_equals_the_eager_merge(
    pool, tmp_path, monkeypatch, spy, method, options, with_adapter, dtype
):
    base, ckpts, adapter = pool
    inputs = [ckpts[0], adapter, ckpts[1]] if with_adapter else ckpts
    weights = [0.5, 0.2, 0.3]
    for setting in ("1", "0"):
        monkeypatch.setenv(fused.COMPILE_ENV, setting)
        spy.clear()
        merge(inputs, tmp_path / setting, method=method, weights=weights, base=base, dtype=dtype, **options)
        assert any(c is not None for c in spy) == (setting == "1")
    native, eager = models.load_state_dict(tmp_path / "1"), models.load_state_dict(tmp_path / "0")
    assert native.keys() == eager.keys()
    for name, tensor in eager.items():
        if method == "task_arithmetic":  # Σ aᵢxᵢ + b·base instead of base + λΣwᵢ(xᵢ - base)
            torch.testing.assert_close(
                native[name].float(), tensor.float(), rtol=2.0**-7, atol=1e-6, msg=name
            )
        else:
            assert torch.equal(native[name], tensor), name


def test_nan_in_a_native_merge_names_the_tensor_and_writes_nothing(pool, tmp_path, monkeypatch):
    _, ckpts, _ = pool
    bad = tmp_path / "bad"
    shutil.copytree(ckpts[1], bad)
    state = models.load_state_dict(ckpts[1])
    name = "model.layers.1.mlp.down_proj.weight"
    state[name][3, 4] = float("nan")
    for file in bad.glob("*.safetensors"):
        file.unlink()
    save_file({k: v.contiguous() for k, v in state.items()}, bad / "model.safetensors")
    monkeypatch.setenv(fused.COMPILE_ENV, "1")
    with pytest.raises(NonFiniteError, match=f"'{name}'"):
        merge([ckpts[0], bad], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    streamed = StreamedModel(
        [SafetensorsSource(ckpts[0]), SafetensorsSource(bad)], device="cpu", compiled_sum=True
    )
    with pytest.raises(NonFiniteError, match=f"'{name}'"):  # the disk tier casts into the live tensor
        streamed.set_weights([0.5, 0.5])


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
    merge_min = fused.MERGE_COMPILE_MIN_BYTES
    assert fused.wanted(merge_min, merge_min) and not fused.wanted(merge_min - 1, merge_min)
    monkeypatch.setenv(fused.COMPILE_ENV, "0")
    assert not fused.wanted(10 * fused.COMPILE_MIN_BYTES)
    monkeypatch.setenv(fused.COMPILE_ENV, "1")
    assert fused.wanted(0)


def test_plan_says_when_the_sum_is_native(pool, monkeypatch):
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
    assert forced.compiled_sum and "weighted sums: native (compiled C)" in forced.describe()
    assert plan(resident="disk").compiled_sum  # the merge engine's workers sum on the CPU too
    # with a GPU: the host tier's chunks are summed on the CPU; the device and disk tiers on the GPU
    on_gpu = dict(method="linear", device="cuda", memory_limit="10GB")
    assert plan_memory(sources, None, resident="host", gpu_free=10**10, **on_gpu).compiled_sum
    assert not plan_memory(sources, None, resident="device", gpu_free=10**10, **on_gpu).compiled_sum
    assert not plan_memory(sources, None, resident="disk", gpu_free=10**10, **on_gpu).compiled_sum
    ties = plan_memory(
        sources, SafetensorsSource(base), method="ties", density=0.5, device="cpu", memory_limit="10GB"
    )
    assert ties.needs.sum_bytes == 0 and not ties.compiled_sum  # no weighted sum
    monkeypatch.setenv(fused.COMPILE_ENV, "maybe")
    with pytest.raises(MergeConfigError, match="HF_RECYCLE_COMPILE"):
        plan()


@pytest.mark.parametrize("tier", ["device", "disk"])
def test_search_with_the_native_sum_finds_the_same_scores(pool, tmp_path, monkeypatch, spy, caplog, tier):
    _, ckpts, _ = pool
    scorers = [TargetMixtureScorer("mix", ckpts, [0.6, 0.3, 0.1])]
    results = {}
    for setting in ("1", "0"):
        monkeypatch.setenv(fused.COMPILE_ENV, setting)
        spy.clear()
        caplog.clear()
        recipe = synthetic_recipe(ckpts, tmp_path / setting, trials=6, sampler="random", resident=tier)
        with caplog.at_level(logging.INFO, logger="hf_recycle._search"):
            results[setting] = search(recipe, scorers=scorers, test_scorers=scorers, n_boot=20)
        assert ("weighted sums: native" in caplog.text) == (setting == "1")
        assert any(c is not None for c in spy) == (setting == "1")
    native, eager = results["1"], results["0"]
    assert native["trials"] == eager["trials"] == 6
    assert native["winner"]["weights"] == eager["winner"]["weights"]
    np.testing.assert_array_equal(native["winner"]["search"]["mean"], eager["winner"]["search"]["mean"])
