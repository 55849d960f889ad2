"""Examples/s of the two scoring engines, ``hf`` and ``vllm``, on the same generate task and model, same run.

Random-weight Llama models with the character tokenizer of ``hf_recycle.testing.models``
(head size 64, which vLLM's CPU attention serves): ``small`` (~3M parameters, hidden 256,
4 layers) and ``100M`` (hidden 768, 12 layers), saved to a folder as a checkpoint is. One
``generate`` task (prompts of 10 to 60 characters, 16 new tokens, greedy) is scored by each
engine, built once as the search builds it (build time reported apart), then timed over
full passes after a warm-up pass. vLLM scores the weights written into it through
``weights_changed`` (as in a search), and the script checks that both engines produce the
same continuations (float32; on a GPU the engines run bfloat16 and the share of equal
continuations is reported instead).

vLLM is not in the project's main venv: the script re-runs itself with ``.venv-vllm``
(``make install-vllm``) when the current Python lacks it. Results go to
``benchmarks/score_engines.json`` and a markdown table on stdout.

    python benchmarks/score_engines.py            # full run
    python benchmarks/score_engines.py --quick    # fewer examples (smoke test)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULT_FILE = HERE / "score_engines.json"
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
sys.path.insert(0, str(ROOT))

MAX_NEW_TOKENS = 16
SIZES = {
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4),
    "100M": dict(hidden_size=768, intermediate_size=2560, num_hidden_layers=12, num_attention_heads=12),
}


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789+= "
    return [
        {"q": "".join(rng.choice(alphabet) for _ in range(rng.randint(10, 60))), "a": "x"} for _ in range(n)
    ]


def save_model(folder: Path, size: str) -> int:
    """A random Llama of ``size`` saved to ``folder`` (float32, with the tokenizer); its parameter count."""
    from hf_recycle.testing import models

    config = models.tiny_llama_config(
        **SIZES[size], num_key_value_heads=SIZES[size]["num_attention_heads"], max_position_embeddings=512
    )
    model = models.build_model(config, seed=0)
    models.save_checkpoint(model, folder, tokenizer=models.build_char_tokenizer(model_max_length=512))
    return sum(p.numel() for p in model.parameters())


def timed(engine, model, runs: int) -> tuple[float, dict]:
    """Best of ``runs`` full passes after a warm-up pass, and the results."""
    results = engine.score(model)
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        results = engine.score(model)
        best = min(best, time.perf_counter() - start)
    return best, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer examples, one timed run")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when present")
    parser.add_argument(
        "--enforce-eager",
        action="store_true",
        help="vLLM without torch.compile or CUDA graphs (faster build)",
    )
    parser.add_argument(
        "--sizes", default=",".join(SIZES), help=f"comma-separated models among {', '.join(SIZES)}"
    )
    args = parser.parse_args(argv)

    if importlib.util.find_spec("vllm") is None:
        if VLLM_PYTHON.is_file() and Path(sys.prefix).resolve() != VLLM_PYTHON.parent.parent.resolve():
            return os.spawnv(os.P_WAIT, str(VLLM_PYTHON), [str(VLLM_PYTHON), __file__, *sys.argv[1:]])
        print("score_engines.py needs vLLM: run make install-vllm (it builds .venv-vllm)", file=sys.stderr)
        return 1

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from hf_recycle._score.api import load_model
    from hf_recycle._score.engines import get_engine
    from hf_recycle._score.tasks import TaskSpec

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = "float32" if device == "cpu" else "bfloat16"
    n_examples = {"small": 64 if args.quick else 256, "100M": 16 if args.quick else 64}
    runs = 1 if args.quick else 2
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            folder = Path(tmp) / size
            params = save_model(folder, size)
            data = Path(tmp) / f"{size}.jsonl"
            data.write_text("".join(json.dumps(r) + "\n" for r in make_rows(n_examples[size])))
            spec = TaskSpec(
                name="gen",
                data={"path": "json", "data_files": str(data)},
                prompt="{q}",
                target="{a}",
                max_new_tokens=MAX_NEW_TOKENS,
            )
            model, tokenizer = load_model(folder, device=device, dtype=dtype)
            row = {"model": size, "params_m": round(params / 1e6, 2), "examples": n_examples[size]}
            start = time.perf_counter()
            hf = get_engine("hf").build(tokenizer, [spec], "search")
            row["hf_build_s"] = round(time.perf_counter() - start, 2)
            hf_s, hf_out = timed(hf, model, runs)

            # load_weights=False: the weights come through weights_changed, as in a search
            options = {"dtype": dtype, "load_weights": False, "enforce_eager": args.enforce_eager}
            options.update(
                {"kv_cache_memory_bytes": 1 << 30} if device == "cpu" else {"gpu_memory_utilization": 0.5}
            )
            start = time.perf_counter()
            vllm = get_engine("vllm").build(tokenizer, [spec], "search", model_dir=folder, **options)
            vllm.weights_changed(model)
            row["vllm_build_s"] = round(time.perf_counter() - start, 2)
            start = time.perf_counter()
            vllm.weights_changed(model)
            row["vllm_weights_s"] = round(time.perf_counter() - start, 4)
            vllm_s, vllm_out = timed(vllm, model, runs)
            vllm.close()

            same = sum(
                a == b for a, b in zip(hf_out["gen"].predictions, vllm_out["gen"].predictions, strict=True)
            )
            if device == "cpu" and same != n_examples[size]:
                print(
                    f"{size}: the engines disagree on {n_examples[size] - same} continuations",
                    file=sys.stderr,
                )
                return 1
            row.update(
                hf_ex_s=round(n_examples[size] / hf_s, 2),
                vllm_ex_s=round(n_examples[size] / vllm_s, 2),
                speedup=round(hf_s / vllm_s, 2),
                same_continuations=f"{same}/{n_examples[size]}",
            )
            results.append(row)
            del model, hf
    import vllm as vllm_module

    meta = {
        "device": device if device == "cpu" else torch.cuda.get_device_name(0),
        "dtype": dtype,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "vllm": vllm_module.__version__,
        "max_new_tokens": MAX_NEW_TOKENS,
        "timed_runs": runs,
        "quick": args.quick,
        "enforce_eager": args.enforce_eager,
    }
    RESULT_FILE.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    eager = ", vLLM eager" if args.enforce_eager else ""
    print(
        f"{meta['device']}, {dtype}, vLLM {meta['vllm']}, torch {meta['torch']}, best of {runs} passes{eager}\n"
    )
    print(
        "| model | examples | hf ex/s | vllm ex/s | speedup | same continuations | hf build s | vllm build s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['model']} ({r['params_m']}M) | {r['examples']} | {r['hf_ex_s']} | {r['vllm_ex_s']} | "
            f"{r['speedup']}x | {r['same_continuations']} | {r['hf_build_s']} | {r['vllm_build_s']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
