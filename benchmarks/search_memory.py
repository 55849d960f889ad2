"""Peak memory of a search over LoRA adapters against scoring the base alone (issue 14).

Builds a Llama-shaped bfloat16 base with ``hf_recycle.testing.models`` (hidden 1024,
8 layers, the tiny character tokenizer: ~190 MB) and 50 PEFT-layout LoRA adapters over
it (r=8 on ``q_proj`` and ``v_proj``, float32 factors, ~0.9 MB each), a small
loglikelihood task (4 search rows, 4 test rows), then runs each case in a fresh child
process and reads that process's peak resident set size (``VmHWM`` of
``/proc/self/status``, which includes the interpreter and torch themselves):

- ``score``: ``hf_recycle._score.api.score`` of the base on the task (bfloat16, CPU);
- ``search-K``: ``hf_recycle._search.api.search`` over K adapters, 3 trials (random
  sampler, uniform baseline), live model in bfloat16 on the CPU, stacks in host RAM;
- ``search-K-dense``: the same with every adapter densified as base + ΔW (the path
  before issue 14, forced with ``ResidentModel(low_rank=False)``).

The targets (issue 14) are search-6 / score <= 1.3 and search-50 / score <= 1.5.
Results go to ``benchmarks/search_memory.json`` and a markdown table on stdout.

    python benchmarks/search_memory.py                 # score, search-6(-dense), search-50
    python benchmarks/search_memory.py --dense-50      # also search-50-dense (~10 GB of RAM)
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "_work" / "search_memory"
RESULT_FILE = HERE / "search_memory.json"
DIMS = dict(
    hidden_size=1024,
    intermediate_size=2816,
    num_hidden_layers=8,
    num_attention_heads=16,
    num_key_value_heads=8,
)
RANK = 8
TARGETS = ("q_proj", "v_proj")
N_ADAPTERS = 50
TRIALS = 3

sys.path.insert(0, str(ROOT))


def build() -> tuple[Path, list[Path]]:
    """``(base, adapters)`` under :data:`WORK`, reused when already built."""
    import torch

    from hf_recycle.testing import models

    base = WORK / "base"
    adapters = [WORK / f"lora-{i:02d}" for i in range(N_ADAPTERS)]
    if (WORK / "done").is_file():
        return base, adapters
    shutil.rmtree(WORK, ignore_errors=True)
    model = models.build_model(models.tiny_llama_config(**DIMS), seed=0)
    models.save_checkpoint(model, base, dtype=torch.bfloat16)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    del model
    models.write_random_lora_adapters(shapes, adapters, r=RANK, target_modules=TARGETS)
    rows = [{"q": f"{i}+{i}=", "a": str(2 * i)} for i in range(8)]
    (WORK / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (WORK / "done").write_text("ok\n")
    return base, adapters


def write_recipe(folder: Path, base: Path, adapters: list[Path]) -> Path:
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    recipe = {
        "name": folder.name,
        "checkpoints": [str(p) for p in adapters],
        "base": str(base),
        "merge": {"method": "linear", "dtype": "bfloat16", "device": "cpu"},
        "search": {"trials": TRIALS, "sampler": "random", "baselines": ["uniform"], "resident": "host"},
        "tasks": [
            {
                "name": "sums",
                "data": {"path": "json", "data_files": str(WORK / "data.jsonl")},
                "search_split": "train[:4]",
                "test_split": "train[4:]",
                "kind": "loglikelihood",
                "prompt": "{q}",
                "target": "{a}",
            }
        ],
        "output": {"dir": str(folder / "out")},
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def child(case: str) -> None:
    """Run one case in this (fresh) process and print its peak RSS as JSON."""
    base, adapters = build()
    start = time.perf_counter()
    extra: dict[str, object] = {}
    if case == "score":
        from hf_recycle._score.api import score

        recipe = write_recipe(WORK / "runs" / "score", base, adapters[:2])
        report = score(str(base), recipe, device="cpu", dtype="bfloat16")
        extra["score"] = float(report.mean) if hasattr(report, "mean") else None
    else:
        from hf_recycle._search import resident
        from hf_recycle._search.api import search

        k = int(case.split("-")[1])
        real_init = resident.ResidentModel.__init__
        sizes: dict[str, int] = {}

        def init(self, *args, **kwargs):
            real_init(self, *args, low_rank=not case.endswith("-dense"), **kwargs)
            sizes.update(resident_bytes=self.resident_bytes, live_bytes=self.live_bytes)

        resident.ResidentModel.__init__ = init
        run = WORK / "runs" / case
        shutil.rmtree(run, ignore_errors=True)
        search(write_recipe(run, base, adapters[:k]), trials=TRIALS)
        extra.update(sizes)
    extra.update(case=case, peak_rss=_peak_rss(), wall_s=round(time.perf_counter() - start, 2))
    print(json.dumps(extra))


def measure(case: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", case], capture_output=True, text=True, check=False, cwd=ROOT
    )
    if proc.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--dense-50", action="store_true", help="also the dense path over 50 adapters")
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    build()
    cases = ["score", "search-6", "search-6-dense", "search-50"] + (
        ["search-50-dense"] if args.dense_50 else []
    )
    results = [measure(case) for case in cases]
    score_rss = results[0]["peak_rss"]
    base_bytes = sum(f.stat().st_size for f in (WORK / "base").glob("*.safetensors"))
    print(f"base: {base_bytes / 1e6:.0f} MB bfloat16; adapters: r={RANK} on {', '.join(TARGETS)}\n")
    print("| case | peak RSS (MB) | / score | resident stacks (MB) | wall s |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        stacks = f"{r['resident_bytes'] / 1e6:.1f}" if "resident_bytes" in r else ""
        ratio = r["peak_rss"] / score_rss
        print(f"| {r['case']} | {r['peak_rss'] / 1e6:.0f} | {ratio:.2f} | {stacks} | {r['wall_s']} |")
    RESULT_FILE.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "python": platform.python_version(),
                "base_bytes": base_bytes,
                "rank": RANK,
                "targets": TARGETS,
                "trials": TRIALS,
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
