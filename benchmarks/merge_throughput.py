"""Throughput and peak memory of ``hf-recycle merge`` (and of ``mergekit-yaml`` on the same job).

Builds K synthetic Llama-shaped bfloat16 checkpoints (default 4 x ~300 MB) and warms the
page cache. The job is a linear merge with uniform weights, bfloat16 out. Two measurements:

1. In process, the engine's rate ("arithmetic GB/s", issue 2's "≥ 3 GB/s of input once the
   files are in the page cache"): input bytes / wall time of one ``hf_recycle.merge(...)``
   call, from opening the inputs to the renamed output folder, the output written into
   the page cache (not fsync'd: the kernel writes it back later, as for any merge).
   Reported twice: *with writing* (the real call) and *without writing* (the same
   ``StreamingMerger`` streaming into a sink that discards the merged blocks: reading,
   float32 arithmetic, the NaN/Inf check and the cast, no output I/O). Before every run
   the previous output is deleted and ``sync`` flushes dirty pages, both outside the
   timed region, so no run pays for the writeback of the one before. ``--repeats`` runs
   each; min and median wall times and process CPU seconds (all threads) are reported.
2. Whole processes: ``python -m hf_recycle merge ...`` (start-up included) and, when
   ``mergekit-yaml`` is found (on PATH or in ``benchmarks/_work/mkvenv``), ``mergekit-yaml``
   on the same job, alternating, ``--runs`` each (medians, peak RSS from ``wait4``); the
   two outputs are compared tensor by tensor.

On a shared machine, read the CPU seconds next to the wall times: the wall time of a run
that lost a core to another process says little; ``load_average`` is recorded too.
Results go to ``benchmarks/merge_throughput.json`` and markdown tables on stdout.

    python benchmarks/merge_throughput.py                  # 4 x ~300 MB, 7 in-process repeats, 3 process runs
    python benchmarks/merge_throughput.py --engine-only    # only the in-process measurement
    python benchmarks/merge_throughput.py --quick          # 2 x ~20 MB, smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "_work" / "merge_throughput"
RESULT_FILE = HERE / "merge_throughput.json"


def llama_shapes(hidden: int, intermediate: int, layers: int, vocab: int, kv_heads: int, heads: int) -> dict:
    head_dim = hidden // heads
    shapes = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "input_layernorm.weight": (hidden,),
                p + "self_attn.q_proj.weight": (hidden, hidden),
                p + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
                p + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
                p + "self_attn.o_proj.weight": (hidden, hidden),
                p + "post_attention_layernorm.weight": (hidden,),
                p + "mlp.gate_proj.weight": (intermediate, hidden),
                p + "mlp.up_proj.weight": (intermediate, hidden),
                p + "mlp.down_proj.weight": (hidden, intermediate),
            }
        )
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def build_checkpoints(k: int, quick: bool) -> tuple[list[Path], int]:
    """K checkpoints (base + noise), reused between runs when already built."""
    import torch
    from safetensors.torch import save_file

    dims = dict(hidden=1024, intermediate=2816, layers=7, vocab=32000, kv_heads=8, heads=16)
    if quick:
        dims = dict(hidden=256, intermediate=704, layers=4, vocab=16000, kv_heads=4, heads=8)
    tag = f"k{k}-" + "-".join(f"{v}" for v in dims.values())
    root = WORK / tag
    paths = [root / f"ckpt-{i}" for i in range(k)]
    shapes = llama_shapes(**dims)
    nbytes = sum(2 * _numel(s) for s in shapes.values())
    if all((p / "model.safetensors").is_file() for p in paths):
        return paths, nbytes
    shutil.rmtree(root, ignore_errors=True)  # a half-built set; other sizes are kept
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": dims["hidden"],
        "intermediate_size": dims["intermediate"], "num_hidden_layers": dims["layers"],
        "num_attention_heads": dims["heads"], "num_key_value_heads": dims["kv_heads"], "vocab_size": dims["vocab"],
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "dtype": "bfloat16",
        "hidden_act": "silu",
    }  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    base = {name: torch.randn(shape, generator=gen) * 0.02 for name, shape in shapes.items()}
    for path in paths:
        path.mkdir(parents=True)
        (path / "config.json").write_text(json.dumps(config, indent=2))
        tensors = {
            n: (t + torch.randn(t.shape, generator=gen) * 0.002).to(torch.bfloat16) for n, t in base.items()
        }
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
        print(f"built {path} ({nbytes / 1e6:.0f} MB)", file=sys.stderr)
    return paths, nbytes


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def find_mergekit() -> str | None:
    found = shutil.which("mergekit-yaml")
    if found:
        return found
    local = HERE / "_work" / "mkvenv" / "bin" / "mergekit-yaml"
    return str(local) if local.is_file() else None


# Runs a command and reports its wall time, CPU time and peak RSS as JSON. A child's
# ru_maxrss includes the RSS its parent had when it forked (Linux keeps the high-water mark
# across exec), so the timed tools are started from this small process, not from the
# benchmark, which holds torch and the in-process measurements.
_LAUNCHER = """
import json, os, subprocess, sys, time
cmd = json.loads(sys.argv[1])
start = time.perf_counter()
proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
stderr = proc.stderr.read()
_, status, usage = os.wait4(proc.pid, 0)
print(json.dumps({
    "seconds": time.perf_counter() - start,
    "cpu_seconds": usage.ru_utime + usage.ru_stime,
    "peak_rss_bytes": usage.ru_maxrss * 1024,
    "returncode": os.waitstatus_to_exitcode(status),
    "stderr": stderr,
}))
"""


def timed(cmd: list[str]) -> dict:
    """Run ``cmd`` (from a small launcher process); wall seconds, CPU seconds, peak RSS (bytes), stderr."""
    launched = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, json.dumps(cmd)], capture_output=True, text=True, check=True
    )
    result = json.loads(launched.stdout)
    if result["returncode"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result['returncode']}):\n{result['stderr'][-3000:]}")
    return result


def warm(paths: list[Path]) -> None:
    for path in paths:
        for file in path.iterdir():
            with open(file, "rb") as fh:
                while fh.read(1 << 24):
                    pass


def compare(a: Path, b: Path) -> float:
    """Largest absolute difference between two merged checkpoints (float32)."""
    from safetensors.torch import load_file

    def state(folder):
        out = {}
        for file in sorted(folder.glob("*.safetensors")):
            out.update(load_file(file))
        return out

    sa, sb = state(a), state(b)
    if set(sa) != set(sb):
        raise RuntimeError(f"outputs have different tensors: {sorted(set(sa) ^ set(sb))[:5]}")
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


class _DiscardSink:
    """A merge sink that drops every block (the "without writing" measurement)."""

    def write(self, key, data, row_start=0) -> None:  # noqa: ANN001
        pass


def _merge_without_writing(paths: list[Path]) -> None:
    """What ``merge(paths, ...)`` does up to the output files: open, check, read, combine, cast, check."""
    from hf_recycle._merge.inputs import open_inputs
    from hf_recycle._merge.methods import get_method, resolve_params
    from hf_recycle._merge.streaming import StreamingMerger

    method = get_method("linear")
    inputs = open_inputs([str(p) for p in paths])
    try:
        count = len(paths)
        merger = StreamingMerger(
            inputs.checkpoints, None, method, [1.0 / count] * count, resolve_params(method), device="cpu"
        )
        merger.stream(_DiscardSink())
    finally:
        inputs.close()


def _clock(run) -> tuple[float, float]:  # noqa: ANN001
    """``(wall seconds, process CPU seconds)`` of ``run()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure_engine(paths: list[Path], input_bytes: int, repeats: int) -> dict:
    """In-process engine rate, with and without writing the output (see the module docstring)."""
    import torch

    from hf_recycle._merge.engine import merge

    out = WORK / "out-engine"
    merge([str(p) for p in paths], out, device="cpu", overwrite=True)  # warm-up: imports, first-touch
    _merge_without_writing(paths)
    runs: dict[str, list[tuple[float, float]]] = {"with_write": [], "without_write": []}
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        os.sync()
        runs["with_write"].append(_clock(lambda: merge([str(p) for p in paths], out, device="cpu")))
        os.sync()
        runs["without_write"].append(_clock(lambda: _merge_without_writing(paths)))
    shutil.rmtree(out, ignore_errors=True)

    def summary(pairs: list[tuple[float, float]]) -> dict:
        walls = [w for w, _ in pairs]
        return {
            "min_seconds": min(walls),
            "median_seconds": statistics.median(walls),
            "gb_per_s_best": input_bytes / 1e9 / min(walls),
            "gb_per_s_median": input_bytes / 1e9 / statistics.median(walls),
            "min_cpu_seconds": min(c for _, c in pairs),
            "median_cpu_seconds": statistics.median(c for _, c in pairs),
            "runs_seconds": [round(w, 4) for w in walls],
            "runs_cpu_seconds": [round(c, 4) for _, c in pairs],
        }

    from hf_recycle._merge.streaming import default_workers

    return {
        "definition": (
            "input bytes / wall time of one in-process hf_recycle.merge() call on page-cached inputs "
            "(with_write: output written into the page cache, not fsync'd; without_write: the same "
            "StreamingMerger streaming into a sink that discards the blocks); sync before each run"
        ),
        "repeats": repeats,
        "workers": default_workers(torch.device("cpu")),
        "torch_threads": torch.get_num_threads(),
        "with_write": summary(runs["with_write"]),
        "without_write": summary(runs["without_write"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoints", "-k", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3, help="whole-process runs per tool (default 3)")
    parser.add_argument("--repeats", type=int, default=7, help="in-process engine runs (default 7)")
    parser.add_argument("--quick", action="store_true", help="small checkpoints, one run each")
    parser.add_argument("--no-mergekit", action="store_true", help="skip mergekit even if installed")
    parser.add_argument("--engine-only", action="store_true", help="only the in-process measurement")
    args = parser.parse_args(argv)
    runs = 1 if args.quick else args.runs
    repeats = 2 if args.quick else args.repeats

    paths, ckpt_bytes = build_checkpoints(args.checkpoints, args.quick)
    input_bytes = ckpt_bytes * len(paths)
    warm(paths)
    load_before = os.getloadavg()
    engine = measure_engine(paths, input_bytes, repeats)
    out_ours, out_mk = WORK / "out-hf-recycle", WORK / "out-mergekit"
    ours_cmd = [sys.executable, "-m", "hf_recycle", "merge", *map(str, paths), "--output", str(out_ours)]
    ours_cmd += ["--overwrite", "--device", "cpu"]
    mergekit = None if args.no_mergekit or args.engine_only else find_mergekit()
    mk_cmd = None
    if mergekit:
        yml = WORK / "mergekit.yml"
        models = "\n".join(f"  - model: {p}\n    parameters: {{weight: 1.0}}" for p in paths)
        yml.write_text(f"merge_method: linear\ndtype: bfloat16\nmodels:\n{models}\n")
        mk_cmd = [mergekit, str(yml), str(out_mk)]

    ours, theirs, engine_rates = [], [], []
    for run in range(0 if args.engine_only else runs):
        shutil.rmtree(out_ours, ignore_errors=True)
        os.sync()
        result = timed(ours_cmd)
        match = re.search(r"in ([\d.]+) s \(([\d.]+) GB/s of input\)", result["stderr"])
        if match:
            engine_rates.append(float(match.group(2)))
        ours.append(result)
        print(
            f"run {run + 1}: hf-recycle {result['seconds']:.2f} s, {result['peak_rss_bytes'] / 1e6:.0f} MB",
            file=sys.stderr,
        )
        if mk_cmd:
            shutil.rmtree(out_mk, ignore_errors=True)
            os.sync()
            result = timed(mk_cmd)
            theirs.append(result)
            print(
                f"run {run + 1}: mergekit   {result['seconds']:.2f} s, {result['peak_rss_bytes'] / 1e6:.0f} MB",
                file=sys.stderr,
            )

    def summary(results):
        seconds = statistics.median(r["seconds"] for r in results)
        return {
            "median_seconds": seconds,
            "input_gb_per_s": input_bytes / 1e9 / seconds,
            "median_peak_rss_mb": statistics.median(r["peak_rss_bytes"] for r in results) / 1e6,
            "median_cpu_seconds": statistics.median(r["cpu_seconds"] for r in results),
            "runs_seconds": [round(r["seconds"], 3) for r in results],
        }

    report: dict = {
        "benchmark": "merge_throughput",
        "job": f"linear merge, uniform weights, {len(paths)} x {ckpt_bytes / 1e6:.0f} MB bfloat16 Llama-shaped checkpoints, bfloat16 out",
        "input_bytes": input_bytes,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "engine": engine,
    }
    if ours:
        report["command"] = " ".join(Path(c).name if i == 0 else c for i, c in enumerate(ours_cmd))
        report["hf_recycle"] = summary(ours)
        report["hf_recycle_logged_gb_per_s"] = statistics.median(engine_rates) if engine_rates else None
    if theirs:
        report["mergekit"] = summary(theirs)
        report["mergekit_command"] = " ".join(mk_cmd)
        report["time_ratio"] = report["hf_recycle"]["median_seconds"] / report["mergekit"]["median_seconds"]
        report["rss_ratio"] = (
            report["hf_recycle"]["median_peak_rss_mb"] / report["mergekit"]["median_peak_rss_mb"]
        )
        report["max_abs_diff_vs_mergekit"] = compare(out_ours, out_mk)
    tmp = RESULT_FILE.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, RESULT_FILE)

    print(f"\n{report['job']} ({os.cpu_count()} CPUs, load average {load_before[0]:.2f} before)\n")
    print(f"In process, page-cached inputs, {engine['workers']} worker threads, {repeats} runs each:\n")
    print("| hf_recycle.merge() | min wall s | median wall s | GB/s of input (best / median) | CPU s (min) |")
    print("|---|---:|---:|---:|---:|")
    for name, label in (("with_write", "with writing"), ("without_write", "without writing")):
        e = engine[name]
        print(
            f"| {label} | {e['min_seconds']:.3f} | {e['median_seconds']:.3f} | "
            f"{e['gb_per_s_best']:.2f} / {e['gb_per_s_median']:.2f} | {e['min_cpu_seconds']:.3f} |"
        )
    print(
        f"\nengine rate with writing: {engine['with_write']['gb_per_s_median']:.2f} GB/s median (target >= 3)"
    )
    if ours:
        o = report["hf_recycle"]
        print("\n| tool (whole process) | median wall s | input GB/s | peak RSS MB | CPU s |")
        print("|---|---|---|---|---|")
        print(
            f"| hf-recycle | {o['median_seconds']:.2f} | {o['input_gb_per_s']:.2f} | "
            f"{o['median_peak_rss_mb']:.0f} | {o['median_cpu_seconds']:.2f} |"
        )
    if theirs:
        m = report["mergekit"]
        print(
            f"| mergekit | {m['median_seconds']:.2f} | {m['input_gb_per_s']:.2f} | "
            f"{m['median_peak_rss_mb']:.0f} | {m['median_cpu_seconds']:.2f} |"
        )
        print(
            f"\ntime ratio {report['time_ratio']:.3f} (target <= 0.333), RSS ratio {report['rss_ratio']:.3f} (target <= 0.5), "
            f"max |diff| vs mergekit {report['max_abs_diff_vs_mergekit']:.3g}"
        )
    print(f"\nwrote {RESULT_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
