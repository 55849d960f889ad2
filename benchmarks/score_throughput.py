"""Throughput of the task scorer against a one-example-at-a-time transformers loop, same run.

Two random-weight Llama models with the character tokenizer of
``hf_recycle.testing.models``: the tiny test model (~60k parameters) and a ~100M-parameter
one (hidden 768, 12 layers). For each, a ``generate`` task (prompts of 10 to 60
characters, 16 new tokens, greedy) and a ``loglikelihood`` task are scored by
:class:`hf_recycle._score.scorer.TaskScorer` (built once, as the search does; the build
time is reported apart) and by a plain loop (``model.generate`` / one forward per
example). Both sides produce the same continuations; the script checks it.

Examples/s counts examples; tokens/s counts prompt plus generated (or target) tokens.
Results go to ``benchmarks/score_throughput.json`` and a markdown table on stdout.

    python benchmarks/score_throughput.py            # full run
    python benchmarks/score_throughput.py --quick    # fewer examples (smoke test)
"""

from __future__ import annotations

import argparse
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
RESULT_FILE = HERE / "score_throughput.json"
sys.path.insert(0, str(ROOT))

MAX_NEW_TOKENS = 16


def build_models():
    from hf_recycle.testing import models

    tiny = models.build_model(models.tiny_llama_config(), seed=0)
    big = models.build_model(
        models.tiny_llama_config(
            hidden_size=768,
            intermediate_size=2560,
            num_hidden_layers=12,
            num_attention_heads=12,
            num_key_value_heads=12,
            max_position_embeddings=512,
        ),
        seed=0,
    )
    return {"tiny": tiny, "100M": big}


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789+= "
    rows = []
    for _ in range(n):
        prompt = "".join(rng.choice(alphabet) for _ in range(rng.randint(10, 60)))
        rows.append({"q": prompt, "a": "".join(rng.choice(alphabet) for _ in range(rng.randint(4, 16)))})
    return rows


def baseline_generate(model, tokenizer, rows) -> tuple[float, list[str], int]:
    import torch

    texts, tokens = [], 0
    start = time.perf_counter()
    with torch.inference_mode():
        for row in rows:
            enc = tokenizer(row["q"], return_tensors="pt")
            out = model.generate(**enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=0)
            new = out[0, enc.input_ids.shape[1] :].tolist()
            eos = [i for i, t in enumerate(new) if t == model.generation_config.eos_token_id]
            new = new[: eos[0]] if eos else new
            texts.append(tokenizer.decode(new, skip_special_tokens=True).strip())
            tokens += enc.input_ids.shape[1] + len(new)
    return time.perf_counter() - start, texts, tokens


def baseline_loglikelihood(model, tokenizer, rows) -> tuple[float, list[float], int]:
    import torch

    values, tokens = [], 0
    start = time.perf_counter()
    with torch.inference_mode():
        for row in rows:
            n_ctx = len(tokenizer(row["q"]).input_ids)
            ids = tokenizer(row["q"] + row["a"], return_tensors="pt").input_ids
            logprobs = torch.log_softmax(model(ids).logits[0].float(), -1)
            target = ids[0, n_ctx:]
            values.append(logprobs[n_ctx - 1 : -1].gather(-1, target[:, None]).sum().item())
            tokens += ids.shape[1]
    return time.perf_counter() - start, values, tokens


def time_scorer(scorer, model, runs: int) -> float:
    scorer.score(model)  # warm-up (pads and caches the batches once, as the search's first trial does)
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        scorer.score(model)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer examples, one timed run")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from hf_recycle._score.scorer import TaskScorer
    from hf_recycle._score.tasks import TaskSpec
    from hf_recycle.testing.models import build_char_tokenizer

    tokenizer = build_char_tokenizer(model_max_length=512)
    sizes = {"tiny": (32, 16) if args.quick else (256, 64), "100M": (16, 8) if args.quick else (32, 16)}
    runs = 1 if args.quick else 2
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in build_models().items():
            n_scorer, n_base = sizes[name]
            rows = make_rows(n_scorer)
            data = Path(tmp) / f"{name}.jsonl"
            data.write_text("".join(json.dumps(r) + "\n" for r in rows))
            params = sum(p.numel() for p in model.parameters())
            for kind in ("generate", "loglikelihood"):
                extra = {"max_new_tokens": MAX_NEW_TOKENS} if kind == "generate" else {}
                spec = TaskSpec(
                    name=f"{name}-{kind}",
                    data={"path": "json", "data_files": str(data)},
                    kind=kind,
                    prompt="{q}",
                    target="{a}",
                    **extra,
                )
                start = time.perf_counter()
                scorer = TaskScorer(spec, tokenizer)
                build_s = time.perf_counter() - start
                scorer_s = time_scorer(scorer, model, runs)
                result = scorer.score(model)
                if kind == "generate":
                    base_s, base_out, base_tokens = baseline_generate(model, tokenizer, rows[:n_base])
                    assert list(result.predictions[:n_base]) == base_out, "scorer and baseline disagree"
                    scorer_tokens = sum(
                        len(tokenizer(r["q"]).input_ids) + len(tokenizer(p).input_ids)
                        for r, p in zip(rows, result.predictions, strict=True)
                    )
                else:
                    base_s, base_out, base_tokens = baseline_loglikelihood(model, tokenizer, rows[:n_base])
                    worst = max(abs(a - b) for a, b in zip(result.per_example, base_out, strict=False))
                    assert worst < 1e-3 * max(1.0, max(abs(v) for v in base_out)), (
                        f"log-likelihoods differ by {worst}"
                    )
                    scorer_tokens = sum(len(tokenizer(r["q"] + r["a"]).input_ids) for r in rows)
                entry = {
                    "model": name,
                    "parameters": params,
                    "kind": kind,
                    "scorer_examples": n_scorer,
                    "baseline_examples": n_base,
                    "scorer_build_s": round(build_s, 3),
                    "scorer_s": round(scorer_s, 4),
                    "baseline_s": round(base_s, 4),
                    "scorer_examples_per_s": round(n_scorer / scorer_s, 2),
                    "baseline_examples_per_s": round(n_base / base_s, 2),
                    "scorer_tokens_per_s": round(scorer_tokens / scorer_s, 1),
                    "baseline_tokens_per_s": round(base_tokens / base_s, 1),
                }
                entry["speedup"] = round(entry["scorer_examples_per_s"] / entry["baseline_examples_per_s"], 2)
                results.append(entry)
                print(f"  {name} {kind}: {entry['speedup']}x", file=sys.stderr, flush=True)

    report = {
        "benchmark": "score_throughput",
        "quick": args.quick,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "max_new_tokens": MAX_NEW_TOKENS,
        "results": results,
    }
    RESULT_FILE.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nscore throughput (CPU, {torch.get_num_threads()} threads; best of {runs} scorer runs)\n")
    print("| model | kind | scorer ex/s | loop ex/s | scorer tok/s | loop tok/s | speedup |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for e in results:
        print(
            f"| {e['model']} ({e['parameters'] / 1e6:.2f}M) | {e['kind']} | {e['scorer_examples_per_s']} | "
            f"{e['baseline_examples_per_s']} | {e['scorer_tokens_per_s']} | {e['baseline_tokens_per_s']} | "
            f"{e['speedup']}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
