"""Throughput and peak memory of ``hf-recycle merge`` (and of ``mergekit-yaml`` on the same job).

Builds K synthetic Llama-shaped bfloat16 checkpoints (default 4 x ~300 MB), warms the
page cache, then times whole ``hf-recycle merge`` processes (linear, uniform weights)
and reports input GB/s and peak RSS. When ``mergekit-yaml`` is found (on PATH or in
``benchmarks/_work/mkvenv``), it runs the same job in the same session, alternating
with hf-recycle, and the ratios are reported; the two outputs are compared tensor by
tensor. Results go to ``benchmarks/merge_throughput.json`` and a markdown table on stdout.

    python benchmarks/merge_throughput.py             # 4 x ~300 MB, 3 runs each
    python benchmarks/merge_throughput.py --quick     # 2 x ~20 MB, 1 run each (smoke test)
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
    shutil.rmtree(WORK, ignore_errors=True)
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


def timed(cmd: list[str]) -> dict:
    """Run ``cmd``; wall seconds, peak RSS of the child (bytes), stderr."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "stderr": stderr,
    }


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoints", "-k", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small checkpoints, one run each")
    parser.add_argument("--no-mergekit", action="store_true", help="skip mergekit even if installed")
    args = parser.parse_args(argv)
    runs = 1 if args.quick else args.runs

    paths, ckpt_bytes = build_checkpoints(args.checkpoints, args.quick)
    input_bytes = ckpt_bytes * len(paths)
    warm(paths)
    out_ours, out_mk = WORK / "out-hf-recycle", WORK / "out-mergekit"
    ours_cmd = [sys.executable, "-m", "hf_recycle", "merge", *map(str, paths), "--output", str(out_ours)]
    ours_cmd += ["--overwrite", "--device", "cpu"]
    mergekit = None if args.no_mergekit else find_mergekit()
    mk_cmd = None
    if mergekit:
        yml = WORK / "mergekit.yml"
        models = "\n".join(f"  - model: {p}\n    parameters: {{weight: 1.0}}" for p in paths)
        yml.write_text(f"merge_method: linear\ndtype: bfloat16\nmodels:\n{models}\n")
        mk_cmd = [mergekit, str(yml), str(out_mk)]

    ours, theirs, engine_rates = [], [], []
    for run in range(runs):
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
        "command": " ".join(Path(c).name if i == 0 else c for i, c in enumerate(ours_cmd)),
        "hf_recycle": summary(ours),
        "hf_recycle_engine_gb_per_s": statistics.median(engine_rates) if engine_rates else None,
    }
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

    o = report["hf_recycle"]
    print(f"\n{report['job']} ({os.cpu_count()} CPUs)\n")
    print("| tool | median wall s (process) | input GB/s | peak RSS MB |")
    print("|---|---|---|---|")
    print(
        f"| hf-recycle | {o['median_seconds']:.2f} | {o['input_gb_per_s']:.2f} | {o['median_peak_rss_mb']:.0f} |"
    )
    if theirs:
        m = report["mergekit"]
        print(
            f"| mergekit | {m['median_seconds']:.2f} | {m['input_gb_per_s']:.2f} | {m['median_peak_rss_mb']:.0f} |"
        )
        print(
            f"\ntime ratio {report['time_ratio']:.3f} (target <= 0.333), RSS ratio {report['rss_ratio']:.3f} (target <= 0.5), "
            f"max |diff| vs mergekit {report['max_abs_diff_vs_mergekit']:.3g}"
        )
    if report["hf_recycle_engine_gb_per_s"]:
        print(
            f"engine arithmetic rate (in-process, warm cache): {report['hf_recycle_engine_gb_per_s']:.2f} GB/s of input (target >= 3)"
        )
    print(f"\nwrote {RESULT_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
