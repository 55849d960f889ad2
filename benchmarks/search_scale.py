"""Search candidates at scale: per-trial candidate time against its floor, and peak RSS (issue 14).

Two pools over one Llama-shaped bfloat16 base built with ``hf_recycle.testing.models``
(default: hidden 2048, 10 layers, intermediate 5632, the tiny character tokenizer:
~470M parameters, ~0.94 GB; ``--small``: hidden 1024, 4 layers, ~95 MB):

- ``full``: 8 full checkpoints (the base plus independent noise, bfloat16);
- ``lora``: 32 PEFT-layout LoRA adapters over the base (r=8 on ``q_proj`` and
  ``v_proj``, float32 factors); 50 are built for the RSS target over 50 adapters.

Per pool and memory tier (``hf_recycle._search.memory``), in a fresh child process, the
candidate model is built the way ``hf_recycle._search.api.search`` builds it
(``plan_memory``, then ``ResidentModel`` or ``StreamedModel``) and
``set_weights`` of a new random weight vector (linear merge, normalized) is timed: one
warm-up, then the median of ``--trials`` calls (scoring excluded). Tiers:

- ``device``: the stacks where the live model runs (on a CPU-only machine this is also
  the ``host`` tier: host RAM is the device);
- ``host`` (only with ``--device cuda``): stacks in host RAM, live model on the GPU;
- ``disk-warm``: nothing resident, every trial streams the inputs from the page cache;
- ``disk-cold``: the same with the input files evicted from the page cache before every
  timed trial (``posix_fadvise(POSIX_FADV_DONTNEED)`` on each; ``drop_caches``, used before,
  also evicted torch's own code pages, whose reloading the trial then paid for).

The floor of a trial is the plan's ``bytes_per_trial`` (``MemoryPlan``: the stacks for
the resident tiers, the input files for the disk tier) divided by the bandwidth of that
source, measured in the same child right before each timed trial (the median of those;
the machine is shared, so a bandwidth measured minutes apart would not match): memory
(the ``device`` tier: bytes per second of a read-only pass, ``Tensor.sum``, over 512 MB of
float32, on the GPU for the GPU ``device`` tier, since a trial reads its stacks and writes an
eighth as much; the ``host`` tier: a 512 MB float32 ``Tensor.copy_``), page-cache read and cold read (a sequential ``readinto`` of the pool's files, 64 MB
at a time, once cached / after the drop). The parent also measures them once up front
(``bandwidths`` in the JSON). Target: time / floor <= 1.5 per tier. For the LoRA pool the
adapters' ΔW products are a compute floor too (their FLOPs over the best float32 ``torch.mm``
rate of the factors' shape measured up front), and the floor is the larger of the two:
neither the bytes nor the products can go faster. One extra ``set_weights`` runs under
``torch.profiler`` to show which operators take the time. Where the plan sums with the
native kernel (``MemoryPlan.compiled_sum``: the full pool's tiers on the CPU), the table
says so and gives the first trial's time, which includes compiling it;
``HF_RECYCLE_COMPILE=0`` runs everything eagerly, for comparison.

Peak RSS (``VmHWM`` of a fresh child process, interpreter and torch included): the
single-model ``score`` of the base on a tiny loglikelihood task, and a short real
``search()`` (3 trials, random sampler, uniform baseline) per pool and tier, plus the
LoRA pool at 6 and 50 adapters. Targets: LoRA search over 6 adapters <= 1.3 x score,
over 50 <= 1.5 x score.

    python benchmarks/search_scale.py            # ~1 GB checkpoints (6-10 minutes on 2 cores)
    python benchmarks/search_scale.py --small    # ~100 MB checkpoints (also: --quick)
    python benchmarks/search_scale.py --pools lora   # only the LoRA pool (timings and its RSS cases)

Results go to ``benchmarks/search_scale.json`` and a markdown table on stdout; the
checkpoints are built once under ``benchmarks/_work/search_scale/`` and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "_work" / "search_scale"
RESULT_FILE = HERE / "search_scale.json"
COMMON = dict(num_attention_heads=16, num_key_value_heads=8)
DIMS = {
    "full": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=10, **COMMON),
    "small": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=4, **COMMON),
}
N_FULL = 8
N_LORA = 32
N_LORA_MAX = 50
RANK = 8
TARGETS = ("q_proj", "v_proj")
SEARCH_TRIALS = 3
TIME_TARGET = 1.5
RSS_TARGETS = {6: 1.3, 50: 1.5}
READ_CHUNK = 64 << 20

sys.path.insert(0, str(ROOT))


# --- the checkpoints ------------------------------------------------------------------------


def work_dir(size: str) -> Path:
    return WORK / size


def build(size: str) -> dict[str, object]:
    """Base, full checkpoints and adapters under ``WORK/size``, reused when already built."""
    folder = work_dir(size)
    base = folder / "base"
    fulls = [folder / f"ckpt-{i}" for i in range(N_FULL)]
    adapters = [folder / f"lora-{i:02d}" for i in range(N_LORA_MAX)]
    layout = {"base": base, "full": fulls, "lora": adapters, "data": folder / "data.jsonl"}
    if (folder / "done").is_file():
        return layout
    import torch

    from hf_recycle.testing import models

    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    built_base, built = models.build_pool(
        folder, n=N_FULL, dtype=torch.bfloat16, scale=0.01, config_overrides=DIMS[size]
    )
    assert built_base == base and built == fulls
    shapes = {k: v.shape for k, v in models.load_state_dict(base).items()}
    models.write_random_lora_adapters(shapes, adapters, r=RANK, target_modules=TARGETS)
    rows = [{"q": f"{i}+{i}=", "a": str(2 * i)} for i in range(8)]
    layout["data"].write_text("".join(json.dumps(r) + "\n" for r in rows))  # type: ignore[union-attr]
    os.sync()
    (folder / "done").write_text(f"built in {time.perf_counter() - start:.0f} s\n")
    return layout


def pool_inputs(layout: dict, pool: str, k: int | None = None) -> tuple[list[Path], Path | None]:
    """``(checkpoints, base)`` of a pool; the full pool's linear merge uses no base."""
    if pool == "full":
        return list(layout["full"][: k or N_FULL]), None
    return list(layout["lora"][: k or N_LORA]), layout["base"]


def weight_files(checkpoints: list[Path], base: Path | None) -> list[Path]:
    folders = [*checkpoints, *([base] if base is not None else [])]
    return [f for d in folders for f in sorted(d.glob("*.safetensors"))]


# --- bandwidths ---------------------------------------------------------------------------


def drop_cache(files: list[Path]) -> str:
    """Evict ``files`` (only they: not the interpreter's and torch's own pages) from the page cache."""
    os.sync()
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return "fadvise"


def read_files(files: list[Path]) -> tuple[int, float]:
    """Read ``files`` sequentially into one reused buffer: ``(bytes, seconds)``."""
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    total = 0
    start = time.perf_counter()
    for file in files:
        with open(file, "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return total, time.perf_counter() - start


def file_bandwidths(files: list[Path]) -> dict[str, object]:
    """Page-cache and cold sequential read bandwidth (bytes/s) of ``files``."""
    read_files(files)  # into the page cache
    warm = [read_files(files) for _ in range(2)]
    nbytes = warm[0][0]
    how = drop_cache(files)
    cold = read_files(files)[1]
    read_files(files)  # leave them cached for what follows
    return {
        "bytes": nbytes,
        "page_cache": nbytes / min(t for _, t in warm),
        "cold": nbytes / cold,
        "cold_drop": how,
    }


def memory_bandwidth(device: str, nbytes: int = 1 << 30) -> float:
    """Bytes per second of a ``Tensor.copy_`` of ``nbytes`` float32 on ``device`` (median of 5)."""
    import torch

    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(6):
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - start)
    return nbytes / statistics.median(times[1:])


def read_bandwidth(device: str, nbytes: int = 1 << 29) -> float:
    """Bytes per second of a read-only pass (``Tensor.sum``) over ``nbytes`` float32 on ``device`` (median of 5).

    A trial of the ``device`` tier reads its stacks and writes only the live model (an
    eighth as many bytes for 8 checkpoints): its floor is the read rate, which a ``copy_``
    (reading and writing as many bytes) understates by about half.
    """
    import torch

    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    times = []
    for _ in range(6):
        sync(device)
        start = time.perf_counter()
        src.sum()
        sync(device)
        times.append(time.perf_counter() - start)
    return nbytes / statistics.median(times[1:])


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# --- child processes ----------------------------------------------------------------------


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def time_case(size: str, pool: str, tier: str, device: str, trials: int) -> dict[str, object]:
    """Build the candidate model of ``pool`` in ``tier`` as ``search()`` does and time ``set_weights``."""
    import numpy as np

    from hf_recycle._merge.compat import align_tied_heads
    from hf_recycle._merge.inputs import open_inputs
    from hf_recycle._search.memory import plan_memory
    from hf_recycle._search.resident import ResidentModel
    from hf_recycle._search.streamed import StreamedModel

    layout = build(size)
    checkpoints, base = pool_inputs(layout, pool)
    files = weight_files(checkpoints, base)
    resident = tier.split("-")[0]
    inputs = open_inputs([str(p) for p in checkpoints], str(base) if base else None)
    try:
        inputs.checkpoints, _ = align_tied_heads(inputs.checkpoints)
        plan = plan_memory(
            inputs.checkpoints,
            inputs.base,
            method="linear",
            dtype="bfloat16",
            device=device,
            resident=resident,
        )
        args = dict(base=inputs.base, method="linear", dtype="bfloat16", device=device)
        start = time.perf_counter()
        if plan.tier == "disk":
            model = StreamedModel(
                inputs.checkpoints, keep_factors=plan.keep_factors, compiled_sum=plan.compiled_sum, **args
            )
        else:
            model = ResidentModel(
                inputs.checkpoints,
                resident_device=plan.resident_device,
                compiled_sum=plan.compiled_sum,
                **args,
            )
        build_s = time.perf_counter() - start
        rng = np.random.default_rng(0)
        k = len(checkpoints)

        cpu: list[float] = []

        def trial() -> float:
            weights = rng.random(k) + 0.05
            sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            model.set_weights(weights)
            sync(device)
            cpu.append(time.process_time() - c0)
            return time.perf_counter() - t0

        first_s = trial()  # warm-up: the files into the page cache (disk), compiling the native sum
        times, drops, read, paired = [], set(), [], []
        for _ in range(trials):
            paired.append(source_bandwidth(tier, device, files, drops))
            if tier == "disk-cold":
                drops.add(drop_cache(files))
            before = getattr(model, "bytes_read", 0)
            times.append(trial())
            read.append(getattr(model, "bytes_read", 0) - before)
        if tier == "disk-cold":
            drops.add(drop_cache(files))
        # the disk tier computes in the merge engine's threads, which the profiler does not see
        profile = None if plan.tier == "disk" else profile_trial(model, rng.random(k) + 0.05, device)
        return {
            "pool": pool,
            "k": k,
            "tier": tier,
            "plan_tier": plan.tier,
            "device": device,
            "bytes_per_trial": plan.bytes_per_trial,
            "bytes_read_measured": read[-1] if plan.tier == "disk" else None,
            "resident_bytes": model.resident_bytes,
            "live_bytes": model.live_bytes,
            "build_s": round(build_s, 3),
            "compiled_sum": plan.compiled_sum,
            "first_s": round(first_s, 3),
            "times_s": [round(t, 4) for t in times],
            "median_s": statistics.median(times),
            "cpu_s": [round(t, 4) for t in cpu[1 : trials + 1]],
            "load_average": os.getloadavg(),
            "cold_drop": ",".join(sorted(drops)) or None,
            "paired_bw": paired,
            "profile": profile,
            "peak_rss": _peak_rss(),
        }
    finally:
        inputs.close()


def source_bandwidth(tier: str, device: str, files: list[Path], drops: set[str]) -> float:
    """The floor's bandwidth (bytes/s), measured right before a timed trial."""
    if tier == "device":
        return read_bandwidth(device, 1 << 29)
    if tier == "host":
        return memory_bandwidth("cpu", 1 << 29)
    if tier == "disk-cold":
        drops.add(drop_cache(files))
    nbytes, seconds = read_files(files)
    return nbytes / seconds


def profile_trial(model, weights, device: str, top: int = 6) -> list[dict[str, object]]:
    """The operators of one ``set_weights`` by self time (ms), largest first."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        model.set_weights(weights)
        sync(device)
    wall = time.perf_counter() - start
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    out: list[dict[str, object]] = [{"op": "(wall, profiled)", "self_ms": round(wall * 1e3, 1), "calls": 1}]
    for e in events[:top]:
        out.append({"op": e.key, "self_ms": round(e.self_cpu_time_total / 1e3, 1), "calls": e.count})
    return out


def write_recipe(
    folder: Path, layout: dict, checkpoints: list[Path], base: Path | None, tier: str, device: str
):
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    recipe: dict[str, object] = {
        "name": folder.name,
        "checkpoints": [str(p) for p in checkpoints],
        "merge": {"method": "linear", "dtype": "bfloat16", "device": device},
        "search": {"trials": SEARCH_TRIALS, "sampler": "random", "baselines": ["uniform"], "resident": tier},
        "tasks": [
            {
                "name": "sums",
                "data": {"path": "json", "data_files": str(layout["data"])},
                "search_split": "train[:4]",
                "test_split": "train[4:]",
                "kind": "loglikelihood",
                "prompt": "{q}",
                "target": "{a}",
            }
        ],
        "output": {"dir": str(folder / "out")},
    }
    if base is not None:
        recipe["base"] = str(base)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def rss_case(size: str, pool: str, k: int, tier: str, device: str) -> dict[str, object]:
    """Peak RSS of ``score`` of the base (``pool == "score"``) or of a short ``search()``."""
    layout = build(size)
    start = time.perf_counter()
    out: dict[str, object] = {"pool": pool, "k": k, "tier": tier, "device": device}
    if pool == "score":
        from hf_recycle._score.api import score

        recipe = write_recipe(
            work_dir(size) / "runs" / "score", layout, layout["full"][:2], None, "auto", device
        )
        score(str(layout["base"]), recipe, device=device, dtype="bfloat16")
    else:
        from hf_recycle._search import resident
        from hf_recycle._search.api import search

        real_init = resident.ResidentModel.__init__
        sizes: dict[str, int] = {}

        def init(self, *args, **kwargs):
            real_init(self, *args, **kwargs)
            sizes.update(resident_bytes=self.resident_bytes, live_bytes=self.live_bytes)

        resident.ResidentModel.__init__ = init
        checkpoints, base = pool_inputs(layout, pool, k)
        run = work_dir(size) / "runs" / f"{pool}-{k}-{tier}"
        shutil.rmtree(run, ignore_errors=True)
        recipe = write_recipe(run, layout, checkpoints, base, tier, device)
        search(recipe, trials=SEARCH_TRIALS, storage=f"journal:{run / 'study.log'}")
        out.update(sizes)
    out.update(peak_rss=_peak_rss(), wall_s=round(time.perf_counter() - start, 2))
    return out


def run_child(size: str, *args: str) -> dict[str, object]:
    flags = ["--small"] if size == "small" else []
    proc = subprocess.run(
        [sys.executable, __file__, *flags, "--child", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"case {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the report ---------------------------------------------------------------------------


def _mb(n: float) -> str:
    return f"{n / 1e6:,.0f}"


def lora_flops(layout: dict, k: int) -> int:
    """Floating-point operations of the adapters' ΔW per trial: 2·out·in·(k·r) per targeted tensor."""
    from safetensors import safe_open

    with safe_open(str(layout["lora"][0] / "adapter_model.safetensors"), "pt") as f:
        shapes = {key: f.get_slice(key).get_shape() for key in f.keys()}
    flops = 0
    for key, (out_f, r) in ((k_, v) for k_, v in shapes.items() if ".lora_B." in k_):
        in_f = shapes[key.replace(".lora_B.", ".lora_A.")][1]
        flops += 2 * out_f * in_f * r * k
    return flops


def matmul_rate(device: str, m: int = 2048, r: int = 256) -> float:
    """Float32 FLOP/s of ``(m, r) @ (r, m)`` products (the LoRA factors' shape), the best of 10."""
    import torch

    u = torch.randn(m, r, device=device)
    v = torch.randn(r, m, device=device)
    out = torch.empty(m, m, device=device)
    times = []
    for _ in range(11):
        sync(device)
        start = time.perf_counter()
        torch.mm(u, v, out=out)
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * m * m * r / min(times[1:])  # the best this machine does: a floor


def floor_for(case: dict, bw: dict) -> tuple[str, float]:
    """``(source, bytes/s)`` of the floor of a timing case."""
    if case["tier"] == "disk-warm":
        return "page cache", bw[case["pool"]]["page_cache"]
    if case["tier"] == "disk-cold":
        return "cold disk", bw[case["pool"]]["cold"]
    if case["tier"] == "device" and str(case["device"]).startswith("cuda"):
        return "GPU memory read", bw["memory_read_cuda"]
    if case["tier"] == "device":
        return "host memory read", bw["memory_read_cpu"]
    return "host memory copy", bw["memory_cpu"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--small", action="store_true", help="~100 MB checkpoints (a quick run)")
    parser.add_argument("--quick", action="store_true", help="the same as --small (make bench --quick)")
    parser.add_argument("--trials", type=int, default=3, help="timed set_weights calls per case (default 3)")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available"
    )
    parser.add_argument(
        "--pools", default="full,lora", help="comma-separated pools to run: full, lora (default both)"
    )
    args = parser.parse_args(argv)
    size = "small" if args.small or args.quick else "full"
    if args.child:
        kind, *rest = args.child
        if kind == "time":
            pool, tier, device, trials = rest
            print(json.dumps(time_case(size, pool, tier, device, int(trials))))
        else:
            pool, k, tier, device = rest
            print(json.dumps(rss_case(size, pool, int(k), tier, device)))
        return 0

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is available")
    start = time.perf_counter()
    load_before = os.getloadavg()
    layout = build(size)
    built = (work_dir(size) / "done").read_text().strip()
    print(f"checkpoints ready ({built}; {time.perf_counter() - start:.0f} s here)", flush=True)

    pools = [p for p in ("full", "lora") if p in args.pools.split(",")]
    bw: dict[str, object] = {"memory_cpu": memory_bandwidth("cpu"), "memory_read_cpu": read_bandwidth("cpu")}
    if device == "cuda":
        bw["memory_cuda"] = memory_bandwidth("cuda")
        bw["memory_read_cuda"] = read_bandwidth("cuda")
    bw["matmul_flops"] = matmul_rate(device)
    for pool in pools:
        bw[pool] = file_bandwidths(weight_files(*pool_inputs(layout, pool)))
    print(json.dumps(bw), flush=True)

    tiers = ["device", *(["host"] if device == "cuda" else []), "disk-warm", "disk-cold"]
    timings = []
    for pool in pools:
        for tier in tiers:
            case = run_child(size, "time", pool, tier, device, str(args.trials))
            source, _ = floor_for(case, bw)
            rate = statistics.median(case["paired_bw"])  # measured next to each trial
            bytes_floor = case["bytes_per_trial"] / rate
            floor = bytes_floor
            if pool == "lora":  # the adapters' ΔW products: a compute floor besides the bytes
                case["flops"] = lora_flops(layout, case["k"])
                case["compute_floor_s"] = case["flops"] / bw["matmul_flops"]
                floor = max(bytes_floor, case["compute_floor_s"])  # neither can be beaten
            case.update(
                floor_source=source,
                floor_bw=rate,
                bytes_floor_s=bytes_floor,
                floor_s=floor,
                ratio=case["median_s"] / floor,
            )
            case["met"] = case["ratio"] <= TIME_TARGET
            print(f"time {pool} {tier}: {case['median_s']:.3f} s, {case['ratio']:.2f}x floor", flush=True)
            timings.append(case)

    rss_plan = [("score", 0, "auto"), ("full", N_FULL, "device"), ("full", N_FULL, "disk")]
    rss_plan += [("lora", 6, "device"), ("lora", N_LORA, "device"), ("lora", N_LORA_MAX, "device")]
    rss_plan += [("lora", N_LORA, "disk")] + ([("lora", N_LORA, "host")] if device == "cuda" else [])
    rss_plan = [case for case in rss_plan if case[0] == "score" or case[0] in pools]
    rss = []
    failed = []
    for pool, k, tier in rss_plan:
        try:
            case = run_child(size, "rss", pool, str(k), tier, device)
        except RuntimeError as exc:  # one failed search: the others still report
            print(exc, file=sys.stderr, flush=True)
            failed.append({"pool": pool, "k": k, "tier": tier, "error": str(exc)[-2000:]})
            continue
        print(f"rss {pool}-{k} {tier}: {case['peak_rss'] / 1e6:.0f} MB", flush=True)
        rss.append(case)
    if not rss or rss[0]["pool"] != "score":
        raise RuntimeError("the score case failed: no RSS ratio to report")
    score_rss = rss[0]["peak_rss"]
    for case in rss:
        case["ratio"] = case["peak_rss"] / score_rss
        target = RSS_TARGETS.get(case["k"]) if case["pool"] == "lora" and case["tier"] != "disk" else None
        case["target"] = target
        case["met"] = None if target is None else case["ratio"] <= target

    base_bytes = sum(f.stat().st_size for f in layout["base"].glob("*.safetensors"))
    load = ", ".join(f"{x:.1f}" for x in load_before)
    print(
        f"\nbase: {base_bytes / 1e6:.0f} MB bfloat16 ({size}); device: {device}; load average at start {load}\n"
    )
    print(
        "| pool | tier | bytes/trial (MB) | median s | floor source | GB/s | bytes floor s "
        "| ΔW compute floor s | floor s | / floor | ≤ 1.5 |"
    )
    print("|---|---|---:|---:|---|---:|---:|---:|---:|---:|---|")
    for c in timings:
        compute = f"{c['compute_floor_s']:.3f}" if "compute_floor_s" in c else ""
        tier = c["tier"] + (f" (native sum; first trial {c['first_s']:.1f} s)" if c["compiled_sum"] else "")
        print(
            f"| {c['pool']}-{c['k']} | {tier} | {_mb(c['bytes_per_trial'])} | {c['median_s']:.3f} "
            f"| {c['floor_source']} | {c['floor_bw'] / 1e9:.2f} | {c['bytes_floor_s']:.3f} | {compute} "
            f"| {c['floor_s']:.3f} | {c['ratio']:.2f} | {'met' if c['met'] else 'MISSED'} |"
        )
    print("\n| case | tier | peak RSS (MB) | / score | target | resident stacks (MB) | wall s |")
    print("|---|---|---:|---:|---|---:|---:|")
    for c in rss:
        name = "score" if c["pool"] == "score" else f"search {c['pool']}-{c['k']}"
        target = "" if c["target"] is None else f"≤ {c['target']} {'met' if c['met'] else 'MISSED'}"
        stacks = _mb(c["resident_bytes"]) if "resident_bytes" in c else ""
        tier = "" if c["pool"] == "score" else c["tier"]
        print(
            f"| {name} | {tier} | {_mb(c['peak_rss'])} | {c['ratio']:.2f} | {target} | {stacks} | {c['wall_s']} |"
        )
    print("\nprofiles (one set_weights, self time in ms):")
    for c in (c for c in timings if c["profile"]):
        ops = ", ".join(f"{p['op']} {p['self_ms']}" for p in c["profile"])
        print(f"- {c['pool']} {c['tier']}: {ops}")
    RESULT_FILE.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "size": size,
                "dims": DIMS[size],
                "base_bytes": base_bytes,
                "rank": RANK,
                "targets": TARGETS,
                "device": device,
                "bandwidths": bw,
                "timings": timings,
                "rss": rss,
                "failed": failed,
                "wall_s": round(time.perf_counter() - start, 1),
                "load_average": {"start": load_before, "end": os.getloadavg()},
            },
            indent=2,
        )
        + "\n"
    )
    for f in failed:
        print(f"FAILED: search {f['pool']}-{f['k']} {f['tier']} (see the error above)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
