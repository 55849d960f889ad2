"""The search's memory plan: what it has (MemAvailable, cgroup v1/v2), what it needs, which tier."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
from synthetic import TargetMixtureScorer, synthetic_recipe

from hf_recycle._merge.sources import SafetensorsSource
from hf_recycle._search.api import search
from hf_recycle._search.memory import HEADROOM, estimate_needs, plan_memory, process_memory
from hf_recycle.errors import SearchMemoryError

GB = 10**9


def _proc(tmp_path: Path, available_kb: int, cgroup: str) -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemTotal: 99999999 kB\nMemAvailable: {available_kb} kB\n")
    (proc / "self" / "cgroup").write_text(cgroup)
    return proc


def _v1(folder: Path, limit: int, usage: int, inactive: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "memory.limit_in_bytes").write_text(f"{limit}\n")
    (folder / "memory.usage_in_bytes").write_text(f"{usage}\n")
    (folder / "memory.stat").write_text(f"cache 5\ntotal_inactive_file {inactive}\n")


def _v2(folder: Path, limit: str, current: int, inactive: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "memory.max").write_text(f"{limit}\n")
    (folder / "memory.current").write_text(f"{current}\n")
    (folder / "memory.stat").write_text(f"anon 1\ninactive_file {inactive}\n")


def test_host_memory_is_the_smallest_of_meminfo_and_cgroup_v1(tmp_path):
    proc = _proc(tmp_path, 8 * 10**6, "9:name=systemd:/\n4:memory:/jobs/a\n0::/\n")
    sys_root = tmp_path / "sys"
    mount = sys_root / "fs" / "cgroup" / "memory"
    _v1(mount, 2**63 - 4096, 10 * GB)  # the root: no limit
    _v1(mount / "jobs", 6 * GB, 1 * GB)  # 5 GB left
    _v1(mount / "jobs" / "a", 3 * GB, 2 * GB, inactive=GB // 2)  # 1.5 GB left: the page cache is free
    available, source = process_memory(proc, sys_root)
    assert available == 3 * GB - (2 * GB - GB // 2)
    assert "cgroup v1" in source and str(mount / "jobs" / "a") in source
    # a looser cgroup than MemAvailable: MemAvailable wins
    _v1(mount / "jobs" / "a", 300 * GB, 0)
    _v1(mount / "jobs", 300 * GB, 0)
    assert process_memory(proc, sys_root) == (8 * 10**6 * 1024, "host MemAvailable")


def test_cgroup_v2_limits_up_the_tree_and_unreadable_paths(tmp_path):
    proc = _proc(tmp_path, 64 * 10**6, "0::/user.slice/job\n")
    sys_root = tmp_path / "sys"
    root = sys_root / "fs" / "cgroup"
    root.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory\n")
    _v2(root / "user.slice", str(4 * GB), 3 * GB, inactive=GB)  # 2 GB left
    _v2(root / "user.slice" / "job", "max", 10)
    available, source = process_memory(proc, sys_root)
    assert available == 2 * GB and "cgroup v2" in source and "user.slice" in source
    # inside a namespace whose path is not visible: the mount's own files
    proc2 = _proc(tmp_path / "ns", 64 * 10**6, "0::/elsewhere/deep\n")
    _v2(root, str(GB), GB // 4)
    assert process_memory(proc2, sys_root)[0] == GB - GB // 4
    # hybrid hosts mount v2 under unified/; a v1 memory line and no files: only MemAvailable
    hybrid = tmp_path / "hybrid"
    _v2(hybrid / "fs" / "cgroup" / "unified" / "g", str(GB), 0)
    proc3 = _proc(tmp_path / "h", 64 * 10**6, "4:memory:/missing\n0::/g\n")
    assert process_memory(proc3, hybrid) == (
        GB,
        f"cgroup v2 memory.max 1.00 GB of {hybrid}/fs/cgroup/unified/g",
    )


def _plan(pool, **kwargs):
    _, ckpts = pool
    sources = [SafetensorsSource(p) for p in ckpts]
    return sources, plan_memory(sources, None, method="linear", device="cpu", **kwargs)


def test_tiers_follow_the_limit_and_the_overrides(llama_pool, tmp_path):
    _, ckpts = llama_pool
    sources = [SafetensorsSource(p) for p in ckpts]
    needs = estimate_needs(sources, None, method="linear")
    numel = sum(s.nbytes(k) for s in sources[:1] for k in s.keys()) // 4
    assert needs.live_bytes == numel * 4 and needs.stack_bytes == 3 * numel * 4 and needs.rows == 3
    device_cost = needs.live_bytes + needs.stack_bytes + needs.resident_buffers
    disk_cost = needs.live_bytes + needs.stream_buffers
    assert disk_cost < device_cost
    roomy = plan_memory(sources, None, method="linear", device="cpu", memory_limit=10 * GB)
    assert roomy.tier == "device" and roomy.resident_device == "cpu" and roomy.fits
    assert "= host: the live model is on the CPU" in roomy.describe()
    assert "each search worker on this host builds its own copy" in roomy.describe()
    tight = plan_memory(
        sources,
        None,
        method="linear",
        device="cpu",
        memory_limit=int((disk_cost + device_cost) / 2 / HEADROOM),
    )
    assert tight.tier == "disk" and tight.resident_device is None and tight.fits
    assert tight.bytes_per_trial == needs.stream_read == 3 * numel * 4
    assert "search.memory_limit" in tight.describe() and "tier disk" in tight.describe()
    forced = plan_memory(sources, None, method="linear", device="cpu", resident="disk", memory_limit=10 * GB)
    assert forced.tier == "disk" and "forced by search.resident" in forced.describe()
    host = plan_memory(sources, None, method="linear", device="cpu", resident="host", memory_limit=10 * GB)
    assert host.tier == "device"  # on a CPU-only run host RAM is the device
    # a forced tier that does not fit is honoured, with a warning in the plan
    squeezed = plan_memory(
        sources, None, method="linear", device="cpu", resident="device", memory_limit=tight.host_available
    )
    assert squeezed.tier == "device" and not squeezed.fits and "does NOT fit" in squeezed.describe()
    # TIES reads every input twice (threshold pass); task vectors stack the base too
    base = SafetensorsSource(llama_pool[0])
    ties = estimate_needs(sources, base, method="ties", density=0.5)
    assert ties.rows == 4 and ties.stream_read == 2 * 4 * numel * 4


def test_gpu_plan_uses_free_gpu_memory(llama_pool):
    _, ckpts = llama_pool
    sources = [SafetensorsSource(p) for p in ckpts]
    needs = estimate_needs(sources, None, method="linear", device_type="cuda")
    gpu_device = needs.live_bytes + needs.stack_bytes + needs.resident_buffers
    plan = plan_memory(sources, None, method="linear", device="cuda", memory_limit=10 * GB, gpu_free=10 * GB)
    assert plan.tier == "device" and plan.resident_device == "cuda"
    small_gpu = int((needs.live_bytes + needs.resident_buffers + gpu_device) / 2 / HEADROOM)
    plan = plan_memory(
        sources, None, method="linear", device="cuda", memory_limit=10 * GB, gpu_free=small_gpu
    )
    assert plan.tier == "host" and plan.resident_device == "cpu" and "GPU free" in plan.describe()


def test_live_model_that_does_not_fit_is_refused_with_numbers(llama_pool):
    _, ckpts = llama_pool
    sources = [SafetensorsSource(p) for p in ckpts]
    with pytest.raises(SearchMemoryError) as err:
        plan_memory(sources, None, method="linear", device="cpu", memory_limit="100KB")
    msg = str(err.value)
    n = estimate_needs(sources, None, method="linear")
    costs = {
        "device": n.live_bytes + n.stack_bytes + n.resident_buffers,
        "disk": n.live_bytes + n.stream_buffers,
    }
    tier = min(costs, key=costs.get)  # tiny tensors: the engine's block buffers outweigh the stacks
    assert f"smallest memory tier ({tier}) needs {costs[tier] / 1e3:.1f} kB of host memory" in msg
    assert "(100.0 kB available: search.memory_limit)" in msg
    assert f"live model {n.live_bytes / 1e3:.1f} kB" in msg
    assert "merge.dtype: bfloat16" in msg and "fewer" in msg and "more memory" in msg
    assert "nothing was loaded" in msg
    assert isinstance(err.value, MemoryError)


def test_recipe_memory_keys_are_validated(llama_pool, tmp_path):
    from pydantic import ValidationError

    _, ckpts = llama_pool
    ok = synthetic_recipe(ckpts, tmp_path, resident="disk", memory_limit="2GiB")
    assert ok.search.resident == "disk" and ok.search.memory_limit == "2GiB"
    assert synthetic_recipe(ckpts, tmp_path).search.memory_limit == "auto"
    with pytest.raises(ValidationError, match="search.memory_limit 'lots' is not a size"):
        synthetic_recipe(ckpts, tmp_path, memory_limit="lots")
    with pytest.raises(ValidationError, match="resident"):
        synthetic_recipe(ckpts, tmp_path, resident="gpu")


def _limit_between_tiers(ckpts) -> int:
    sources = [SafetensorsSource(p) for p in ckpts]
    needs = estimate_needs(sources, None, method="linear")
    device_cost = needs.live_bytes + needs.stack_bytes + needs.resident_buffers
    return int((needs.live_bytes + needs.stream_buffers + device_cost) / 2 / HEADROOM)


@pytest.mark.slow  # two real searches
def test_search_picks_disk_under_a_small_limit_and_scores_the_same(llama_pool, tmp_path, caplog):
    _, ckpts = llama_pool
    scorers = [TargetMixtureScorer("mix", ckpts, [0.6, 0.3, 0.1])]
    limit = _limit_between_tiers(ckpts)
    results = {}
    for name, spec in {"device": {}, "disk": {"memory_limit": limit}}.items():
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="hf_recycle._search"):
            recipe = synthetic_recipe(ckpts, tmp_path / name, trials=8, sampler="random", **spec)
            results[name] = search(recipe, scorers=scorers, test_scorers=scorers, n_boot=50)
        assert f"memory plan: tier {name}" in caplog.text
        assert ("streamed model:" in caplog.text) == (name == "disk")
    device, disk = results["device"], results["disk"]
    assert disk["trials"] == device["trials"] == 8
    assert disk["winner"]["weights"] == device["winner"]["weights"]
    np.testing.assert_allclose(
        disk["winner"]["search"]["mean"], device["winner"]["search"]["mean"], rtol=1e-5
    )
    np.testing.assert_allclose(disk["winner"]["test"]["mean"], device["winner"]["test"]["mean"], rtol=1e-5)


# --- a real cgroup v1 memory limit -----------------------------------------------------------

_CHILD = """
import logging, os, sys
sys.path.insert(0, {tests!r})
# code is loaded before joining the group: only the search's data is charged to it
import optuna, torch, transformers  # noqa: F401
import transformers.models.llama.modeling_llama  # noqa: F401
import hf_recycle._merge.streaming, hf_recycle._search.streamed, hf_recycle._search.results  # noqa: F401
from synthetic import TargetMixtureScorer, synthetic_recipe
from hf_recycle._search.api import search
from hf_recycle.testing.models import build_model, tiny_llama_config
build_model(tiny_llama_config())  # transformers' lazy set-up of a model
from hf_recycle._search.resident import ResidentModel
ckpts = {ckpts!r}
scorers = [TargetMixtureScorer("mix", ckpts, [0.6, 0.3, 0.1])]  # its copies: before joining the group
built = []
real_init = ResidentModel.__init__
ResidentModel.__init__ = lambda self, *a, **k: (built.append(1), real_init(self, *a, **k))[1]
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
open({procs!r}, "w").write(str(os.getpid()))  # join the limited group
res = search(synthetic_recipe(ckpts, {out!r}, trials=8, sampler="random", resident="auto"),
             scorers=scorers, test_scorers=None, n_boot=20)
print("TRIALS", res["trials"], "RESIDENT_BUILT", len(built))
"""


def _memory_cgroup_dir() -> Path | None:
    mount = Path("/sys/fs/cgroup/memory")
    if not (mount / "memory.limit_in_bytes").is_file():
        return None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            own = mount / path.lstrip("/")
            return own if own.is_dir() else mount
    return None


@pytest.mark.slow  # searches in a child process under a real memory limit
def test_real_cgroup_v1_limit_makes_the_search_stream(tmp_path):
    """A real memory cgroup, limited so that the stacks do not fit but the live model does."""
    parent = _memory_cgroup_dir()
    if parent is None:
        pytest.skip("no cgroup v1 memory controller at /sys/fs/cgroup/memory")
    if os.geteuid() != 0:
        pytest.skip("creating a memory cgroup needs root")
    from hf_recycle.testing import models

    # ~40 MB per checkpoint: the 3 stacks (120 MB) do not fit in the group, the live model does
    _, ckpts = models.build_pool(
        tmp_path / "pool",
        "llama",
        n=3,
        seed=5,
        config_overrides={"hidden_size": 256, "intermediate_size": 6144},
    )
    sources = [SafetensorsSource(p) for p in ckpts]
    needs = estimate_needs(sources, None, method="linear")
    # + what a search allocates besides the model (measured ~50 MB here: the scorer's copies,
    # optuna, sqlite, allocator slack), which the 15% headroom covers only for real models
    limit = int((needs.live_bytes + needs.stream_buffers) / HEADROOM) + 80 * 2**20
    assert needs.live_bytes + needs.stack_bytes > HEADROOM * limit
    group = parent / f"hf-recycle-test-{uuid.uuid4().hex[:12]}"
    try:
        group.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a memory cgroup under {parent}: {exc}")
    try:
        (group / "memory.limit_in_bytes").write_text(str(limit))
        script = _CHILD.format(
            tests=str(Path(__file__).parent),
            ckpts=[str(p) for p in ckpts],
            procs=str(group / "cgroup.procs"),
            out=str(tmp_path / "out"),
        )
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=600
        )
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-4000:]
        assert "memory plan: tier disk" in log and "cgroup v1 limit" in log, log[-4000:]
        assert "TRIALS 8 RESIDENT_BUILT 0" in log
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            (parent / "cgroup.procs").write_text(pid)  # nothing should be left; never leave a group busy
        group.rmdir()


def test_run_dry_run_prints_the_memory_plan(llama_pool, tmp_path):
    from hf_recycle.pipeline import plan

    _, ckpts = llama_pool
    text = plan(synthetic_recipe(ckpts, tmp_path, ("mix",), memory_limit="10GB")).describe()
    assert "memory plan: tier device" in text and "(search.memory_limit)" in text
    text = plan(synthetic_recipe(ckpts, tmp_path, ("mix",), memory_limit="100KB")).describe()
    assert "memory plan: the search's live model does not fit" in text
    assert text.rstrip().endswith("nothing was downloaded or computed (--dry-run)")


def test_lora_stacks_are_estimated_as_base_once_plus_factors(llama_pool, tmp_path):
    from hf_recycle._merge.inputs import open_inputs
    from hf_recycle.testing.models import build_lora_adapter

    base_dir, _ = llama_pool
    paths = [build_lora_adapter(base_dir, tmp_path / f"lora-{i}", seed=i, r=4) for i in range(3)]
    inputs = open_inputs([str(p) for p in paths], str(base_dir))
    try:
        needs = estimate_needs(inputs.checkpoints, inputs.base, method="linear")
        base = SafetensorsSource(base_dir)
        base_bytes = sum(base.nbytes(k) for k in base.keys())
        files = sum((p / "adapter_model.safetensors").stat().st_size for p in paths)
        # the base's copy of the tensors some adapter changes (the others are written once), + the factors
        changed = sum(base.nbytes(k) for k in base.keys() if any(a.changes(k) for a in inputs.checkpoints))
        assert 0 < changed < base_bytes
        assert needs.lora and needs.stack_bytes == changed + files  # float32 factors: file size
        assert needs.stack_bytes < 2 * base_bytes  # not K dense copies
        assert needs.stream_read == changed + files  # per trial: those tensors and the factors
    finally:
        inputs.close()


def test_lora_pool_plan_counts_what_the_candidate_model_holds_and_reads(llama_pool, tmp_path):
    """Adapters over one base: the plan counts the base's copy of the tensors they change (not the whole
    base), which is what the resident model keeps and what the disk tier re-reads each trial."""
    import warnings

    from hf_recycle._merge.inputs import open_inputs
    from hf_recycle._search.resident import ResidentModel
    from hf_recycle._search.streamed import StreamedModel
    from hf_recycle.testing.models import build_lora_adapter

    base_dir, _ = llama_pool
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = [
            str(build_lora_adapter(base_dir, tmp_path / f"a{i}", r=4, target_modules=["q_proj"], seed=i))
            for i in range(3)
        ]
    inputs = open_inputs(paths, base=str(base_dir))
    needs = estimate_needs(inputs.checkpoints, inputs.base, method="linear")
    held = ResidentModel(inputs.checkpoints, device="cpu").resident_bytes
    base_bytes = sum(SafetensorsSource(base_dir).nbytes(k) for k in SafetensorsSource(base_dir).keys())
    assert held < base_bytes / 2  # only the q_proj copies and the factors
    assert held <= needs.stack_bytes <= 1.15 * held  # file sizes (headers included): a little over
    streamed = StreamedModel(open_inputs(paths, base=str(base_dir)).checkpoints, device="cpu")
    streamed.set_weights([0.5, 0.3, 0.2])
    first = streamed.bytes_read
    streamed.set_weights([0.2, 0.3, 0.5])
    per_trial = streamed.bytes_read - first
    assert per_trial < first / 2  # after the first trial only the changed tensors are streamed
    factors = sum(Path(p, "adapter_model.safetensors").stat().st_size for p in paths)
    assert per_trial == needs.stream_read - factors  # bytes_read counts the base's blocks, not the factors
    unnormalized = estimate_needs(inputs.checkpoints, inputs.base, method="linear", sums_to_one=False)
    assert unnormalized.stack_bytes > base_bytes  # Σw ≠ 1 scales every tensor: all are kept


def test_too_big_advice_fits_the_run(llama_pool_bf16):
    """A bfloat16 model is not told to use bfloat16; a model too big for the GPU is told to use the CPU."""
    _, ckpts = llama_pool_bf16
    sources = [SafetensorsSource(p) for p in ckpts]
    with pytest.raises(SearchMemoryError) as cpu:
        plan_memory(sources, None, method="linear", device="cpu", memory_limit="100KB")
    assert "bfloat16" not in str(cpu.value) and "merge.device: cpu" not in str(cpu.value)
    assert "fewer or smaller checkpoints" in str(cpu.value)
    with pytest.raises(SearchMemoryError) as gpu:
        plan_memory(sources, None, method="linear", device="cuda", memory_limit=10 * GB, gpu_free=1000)
    assert "of GPU memory" in str(gpu.value) and "merge.device: cpu, or --device cpu" in str(gpu.value)


def test_disk_tier_keeps_lora_factors_when_they_fit(llama_pool, tmp_path, monkeypatch):
    """The disk tier reads and converts the adapters' factors once when the plan has room for them,
    writes the same candidates, and plans (and reads) the base's tensors only per trial."""
    import warnings

    import torch
    from safetensors.torch import load_file

    from hf_recycle._merge.inputs import open_inputs
    from hf_recycle._merge.lora import LoraSource
    from hf_recycle._search.streamed import StreamedModel
    from hf_recycle.testing.models import build_lora_adapter

    base_dir, _ = llama_pool
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = [
            str(
                build_lora_adapter(
                    base_dir, tmp_path / f"a{i}", r=4, target_modules=["q_proj", "v_proj"], seed=i
                )
            )
            for i in range(3)
        ]
    inputs = open_inputs(paths, base=str(base_dir))
    needs = estimate_needs(inputs.checkpoints, inputs.base, method="linear")
    files = sum(Path(p, "adapter_model.safetensors").stat().st_size for p in paths)
    assert needs.factor_read == files and needs.factor_bytes >= files - 3 * 10**4  # float32 factors
    room = needs.live_bytes + needs.stream_buffers
    plan = plan_memory(
        inputs.checkpoints, inputs.base, method="linear", resident="disk", memory_limit=10 * GB
    )
    assert plan.keep_factors and plan.bytes_per_trial == needs.stream_read - files
    assert "adapter factors kept across trials" in plan.describe()
    tight = int((room + needs.factor_bytes // 2) / HEADROOM)  # the disk tier fits, the factors do not
    plan = plan_memory(inputs.checkpoints, inputs.base, method="linear", resident="disk", memory_limit=tight)
    assert plan.fits and not plan.keep_factors and plan.bytes_per_trial == needs.stream_read
    ties = plan_memory(inputs.checkpoints, inputs.base, method="ties", resident="disk", memory_limit=10 * GB)
    assert not ties.keep_factors  # TIES reads each adapter's dense ΔW: no factors to keep

    calls = []
    original = LoraSource.low_rank_form
    monkeypatch.setattr(
        LoraSource,
        "low_rank_form",
        lambda self, key, device="cpu": calls.append(key) or original(self, key, device),
    )
    kept = StreamedModel(inputs.checkpoints, keep_factors=True, device="cpu")
    fresh = StreamedModel(open_inputs(paths, base=str(base_dir)).checkpoints, device="cpu")
    for trial, weights in enumerate(([0.5, 0.3, 0.2], [0.2, 0.0, 0.8], [1.0, 2.0, 3.0])):
        calls.clear()
        kept.set_weights(weights)
        assert bool(calls) == (trial == 0)  # the factors are read by the first trial only
        fresh.set_weights(weights)
        assert calls  # ... and every trial without keep_factors
        ours, reference = dict(kept.model.named_parameters()), dict(fresh.model.named_parameters())
        for name, param in reference.items():
            assert torch.equal(ours[name], param), name
    # the kept factors (each adapter's, and their concatenation per tensor) are held once
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in _tensors(kept._factors)}
    factors = sum(
        t.numel() * 4 for p in paths for t in load_file(Path(p, "adapter_model.safetensors")).values()
    )
    assert sum(storages.values()) == factors


def _tensors(cache):
    for value in cache.values():
        if isinstance(value, tuple):
            yield from value
        elif value is not None and value.u is not None:
            yield value.u
            yield value.v
