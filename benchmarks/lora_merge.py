"""Cost of merging LoRA adapters (base + ΔW per tensor) against a full merge of the same size.

Builds a synthetic Llama-shaped bfloat16 base (~300 MB), 4 full checkpoints of it and 4
LoRA adapters (r=16 on every attention and MLP projection, PEFT file layout), warms the
page cache, then times in-process ``hf_recycle._merge.engine.merge`` calls, alternating
(before each run the previous output is deleted and ``sync`` flushes dirty pages, outside
the timed region; wall and process CPU seconds are recorded):

- ``full``: a 4-way linear merge of the full checkpoints;
- ``lora``: a 4-way linear merge of the adapters onto the base (output: a full checkpoint);
- ``lora->lora exact`` / ``lora->lora r16``: the same adapters merged into one adapter.

The target (issue 3) is lora / full <= 1.5, on median wall times (the ratio of CPU seconds
is reported too: on a shared machine it is the steadier of the two). Results go to
``benchmarks/lora_merge.json`` and a markdown table on stdout.

    python benchmarks/lora_merge.py            # ~300 MB base, 3 runs each
    python benchmarks/lora_merge.py --quick    # ~20 MB base, 1 run each (smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "_work" / "lora_merge"
RESULT_FILE = HERE / "lora_merge.json"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))


def build(k: int, rank: int, quick: bool) -> tuple[Path, list[Path], list[Path], int]:
    """``(base, full checkpoints, adapters, base bytes)``, reused when already built."""
    import torch
    from merge_throughput import llama_shapes
    from safetensors.torch import save_file

    dims = dict(hidden=1024, intermediate=2816, layers=7, vocab=32000, kv_heads=8, heads=16)
    if quick:
        dims = dict(hidden=256, intermediate=704, layers=4, vocab=16000, kv_heads=4, heads=8)
    root = WORK / (f"k{k}-r{rank}-" + "-".join(str(v) for v in dims.values()))
    base = root / "base"
    fulls = [root / f"full-{i}" for i in range(k)]
    adapters = [root / f"lora-{i}" for i in range(k)]
    shapes = llama_shapes(**dims)
    nbytes = sum(2 * _numel(s) for s in shapes.values())
    if (root / "done").is_file():
        return base, fulls, adapters, nbytes
    shutil.rmtree(root, ignore_errors=True)  # a half-built set; other sizes are kept
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": dims["hidden"],
        "intermediate_size": dims["intermediate"], "num_hidden_layers": dims["layers"],
        "num_attention_heads": dims["heads"], "num_key_value_heads": dims["kv_heads"], "vocab_size": dims["vocab"],
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "dtype": "bfloat16",
        "hidden_act": "silu",
    }  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    base_state = {k_: (torch.randn(s, generator=gen) * 0.02).bfloat16() for k_, s in shapes.items()}
    for folder, state in [(base, base_state)] + [
        (
            f,
            {
                k_: (v.float() + torch.randn(v.shape, generator=gen) * 0.002).bfloat16()
                for k_, v in base_state.items()
            },
        )
        for f in fulls
    ]:
        folder.mkdir(parents=True)
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps(config))
    modules = sorted({k_.rsplit(".", 1)[0] for k_ in shapes if k_.rsplit(".", 2)[-2] in TARGETS})
    for folder in adapters:
        folder.mkdir(parents=True)
        tensors = {}
        for module in modules:
            out_f, in_f = shapes[module + ".weight"]
            tensors[f"base_model.model.{module}.lora_A.weight"] = (
                torch.randn(rank, in_f, generator=gen) * 0.01
            )
            tensors[f"base_model.model.{module}.lora_B.weight"] = (
                torch.randn(out_f, rank, generator=gen) * 0.01
            )
        save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
        (folder / "adapter_config.json").write_text(
            json.dumps(
                {
                    "peft_type": "LORA",
                    "r": rank,
                    "lora_alpha": 2 * rank,
                    "target_modules": list(TARGETS),
                    "task_type": "CAUSAL_LM",
                    "base_model_name_or_path": str(base),
                }  # fmt: skip
            )
        )
    (root / "done").write_text("ok\n")
    return base, fulls, adapters, nbytes


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _warm(paths: list[Path]) -> None:
    for folder in paths:
        for file in folder.glob("*.safetensors"):
            with open(file, "rb") as fh:
                while fh.read(1 << 24):
                    pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small base, one run each")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per case (default 5, quick 1)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("-k", type=int, default=4, help="inputs per merge (default 4)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args(argv)
    runs = args.runs or (1 if args.quick else 5)

    import torch

    from hf_recycle._merge.engine import merge

    base, fulls, adapters, nbytes = build(args.k, args.rank, args.quick)
    _warm([base, *fulls, *adapters])
    out = WORK / "out"
    cases = {
        "full": lambda: merge([str(p) for p in fulls], out, device=args.device),
        "lora": lambda: merge([str(p) for p in adapters], out, base=str(base), device=args.device),
        "lora->lora exact": lambda: merge(
            [str(p) for p in adapters], out, base=str(base), device=args.device, output_format="lora"
        ),
        f"lora->lora r{args.rank}": lambda: merge(
            [str(p) for p in adapters],
            out,
            base=str(base),
            device=args.device,
            output_format="lora",
            lora_rank=args.rank,
        ),
    }
    for run in cases.values():  # warm-up (imports, page cache of the outputs' folder)
        shutil.rmtree(out, ignore_errors=True)
        run()
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, run in cases.items():  # alternate, so that noise from other processes spreads evenly
            shutil.rmtree(out, ignore_errors=True)
            os.sync()
            started, cpu_started = time.perf_counter(), time.process_time()
            run()
            times[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - cpu_started)
    shutil.rmtree(out, ignore_errors=True)

    median = {name: statistics.median(t) for name, t in times.items()}
    best = {name: min(t) for name, t in times.items()}
    median_cpu = {name: statistics.median(t) for name, t in cpu.items()}
    ratio = median["lora"] / median["full"]
    result = {
        "benchmark": "lora_merge",
        "quick": args.quick,
        "k": args.k,
        "rank": args.rank,
        "base_bytes": nbytes,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "runs": runs,
        "seconds": times,
        "cpu_seconds": cpu,
        "median_seconds": median,
        "min_seconds": best,
        "median_cpu_seconds": median_cpu,
        "lora_over_full": ratio,
        "lora_over_full_min": best["lora"] / best["full"],
        "lora_over_full_cpu": median_cpu["lora"] / median_cpu["full"],
        "target_lora_over_full": 1.5,
        "meets_target": ratio <= 1.5,
    }
    RESULT_FILE.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\n{args.k} inputs, base {nbytes / 1e6:.0f} MB bfloat16, LoRA r={args.rank}, {args.device}, {runs} runs, "
        f"load average {load_before[0]:.2f}\n"
    )
    print("| case | median s | min s | vs full (median) | median CPU s |")
    print("|---|---:|---:|---:|---:|")
    for name, value in median.items():
        print(
            f"| {name} | {value:.3f} | {best[name]:.3f} | {value / median['full']:.2f}x | {median_cpu[name]:.3f} |"
        )
    print(
        f"\nlora / full = {ratio:.2f} median wall, {result['lora_over_full_min']:.2f} min wall, "
        f"{result['lora_over_full_cpu']:.2f} CPU (target <= 1.5: {'met' if ratio <= 1.5 else 'NOT met'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
