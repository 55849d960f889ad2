"""``make demo``: train a pool, serve it on a local Hub, recycle it with ``recipes/demo.yaml``.

Steps: (1) train the pool (:mod:`hf_recycle.demo.pool`) and publish it to a local
Hub-compatible server on 127.0.0.1 as ``demo/tiny-lm`` (branch ``base`` and one
``step-*`` branch per checkpoint); (2) run the recipe against that server with
:func:`hf_recycle.pipeline.run`; (3) push the merged model and its card to the same
server; (4) score every checkpoint on the held-out split and print the table.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_recycle.demo.pool import BASE, DEMO_PLAN, TRUNK, Stage, scaled_plan, train_pool

logger = logging.getLogger(__name__)

REPO_ID = "demo/tiny-lm"
RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "demo.yaml"


@dataclass
class DemoResult:
    """What the demo did.

    Attributes:
        output_dir: The run's output folder (``results.json``, ``model/``, ``demo.json``...).
        results: The pipeline's ``results.json`` content.
        table: The rows printed: one per checkpoint, baseline and the optimized merge.
        push_url: Where the merged model went (commit URL on the local Hub).
        seconds: Wall time of each step.
    """

    output_dir: Path
    results: dict[str, Any]
    table: list[dict[str, Any]]
    push_url: str | None
    seconds: dict[str, float]


def publish_pool(
    hub, folders: dict[str, Path], plan: tuple[Stage, ...], repo_id: str = REPO_ID
) -> dict[str, str]:
    """Publish every stage to ``hub`` as branch ``<stage name>`` of ``repo_id`` (the trunk also as ``base``)."""
    shas = {}
    for stage in plan:
        message = f"{stage.name}: {stage.note} ({stage.steps} steps, lr {stage.lr:g})"
        shas[stage.name] = hub.publish(folders[stage.name], repo_id, branch=stage.name, message=message)
        if stage.name == TRUNK:
            shas[BASE] = hub.publish(folders[stage.name], repo_id, branch=BASE, message=f"base: {message}")
    return shas


def _checkpoint_rows(
    recipe_path: Path, results: dict[str, Any], folders: dict[str, Path], plan
) -> list[dict]:
    """Held-out scores of every checkpoint of the pool (from its local folder, same tasks)."""
    from hf_recycle.score.api import score

    notes = {s.name: s.note for s in plan}
    rows = []
    for entry in results["checkpoints"]:
        name = entry.get("revision") or entry["spec"].split("@")[-1]
        report = score(folders[name], recipe_path, split="test", device="cpu", dtype="float32")
        rows.append(
            {"name": name, "kind": "checkpoint", "note": notes.get(name, ""), "test": report.to_json()}
        )
    return rows


def _table(results: dict[str, Any], checkpoints: list[dict]) -> list[dict[str, Any]]:
    rows = list(checkpoints)
    labels = {"uniform": "uniform soup", "best_single": "best single", "greedy_soup": "greedy soup"}
    for name, entry in results["baselines"].items():
        note = ""
        if name == "best_single":
            note = checkpoints[entry["checkpoint"]]["name"]
        elif name == "greedy_soup":
            note = " + ".join(checkpoints[i]["name"] for i in entry["members"])
        rows.append(
            {"name": labels.get(name, name), "kind": "baseline", "note": note, "test": _flat(entry["test"])}
        )
    rows.append(
        {
            "name": "optimized merge",
            "kind": "merge",
            "note": f"CMA-ES, trial {results['winner']['trial']}",
            "test": _flat(results["winner"]["test"]),
            "weights": results["winner"]["weights"],
        }
    )
    return rows


def _flat(scores: dict[str, float]) -> dict[str, Any]:
    return {"scores": {k: v for k, v in scores.items() if k != "mean"}, "mean": scores["mean"]}


def format_table(rows: list[dict[str, Any]], tasks: list[str]) -> str:
    """The held-out table as GitHub markdown: one row per checkpoint, baseline and the merge."""
    merge = next((r for r in rows if r["kind"] == "merge"), None)
    weights = merge["weights"] if merge else []
    head = ["model", *tasks, "mean", "merge weight", "what it is"]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(tasks) + 2) + ["---"]) + "|",
    ]
    for i, row in enumerate(rows):
        cells = [
            row["name"],
            *(f"{row['test']['scores'][t]:.3f}" for t in tasks),
            f"{row['test']['mean']:.3f}",
        ]
        cells.append(f"{weights[i]:.3f}" if row["kind"] == "checkpoint" and i < len(weights) else "")
        cells.append(row["note"])
        if row["kind"] == "merge":
            cells = [f"**{c}**" if c else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_pareto(rows: list[dict[str, Any]], tasks: list[str], path: str | Path) -> Path:
    """The two task axes: every checkpoint, the baselines and the optimized merge (held-out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 5.0), dpi=110)
    styles = {"checkpoint": ("o", "tab:gray"), "baseline": ("s", "tab:blue"), "merge": ("*", "tab:red")}
    for row in rows:
        marker, color = styles[row["kind"]]
        x, y = (row["test"]["scores"][t] for t in tasks[:2])
        ax.scatter([x], [y], marker=marker, color=color, s=260 if row["kind"] == "merge" else 60, zorder=3)
        ax.annotate(row["name"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel(f"{tasks[0]} (held-out exact match)")
    ax.set_ylabel(f"{tasks[1]} (held-out exact match)")
    ax.set_title("hf-recycle demo: checkpoints, baselines and the optimized merge")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run_demo(
    output_dir: str | Path = "outputs/demo",
    *,
    recipe: str | Path = RECIPE,
    steps_scale: float = 1.0,
    trials: int | None = None,
    figure: str | Path | None = None,
    echo: Any = print,
) -> DemoResult:
    """Run the whole demo (see the module docstring) and print its table.

    Args:
        output_dir: Output folder; the pool, the local Hub's storage and the recipe's
            outputs go under it. A previous run's study is removed first, so that a
            rerun measures afresh.
        recipe: The recipe (``recipes/demo.yaml``).
        steps_scale: Multiplies every training stage's steps (the CI test uses less).
        trials: Search trials (default: the recipe's).
        figure: Also save the Pareto picture here (e.g. ``docs/demo_pareto.png``).
        echo: Where progress lines go.
    """
    import shutil

    from hf_recycle.pipeline import run
    from hf_recycle.recipe import Recipe
    from hf_recycle.testing.local_hub import LOCAL_TOKEN, LocalHub

    out = Path(output_dir)
    recipe = Path(recipe)
    for stale in ("study.db", "results.json", "results.md", "model", "plots"):
        target = out / stale
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    plan = scaled_plan(DEMO_PLAN, steps_scale)
    seconds: dict[str, float] = {}

    echo(f"[1/4] training {len(plan)} checkpoints of a tiny Llama (shared trunk {TRUNK}, then branches)")
    start = time.perf_counter()
    folders = train_pool(
        out / "pool",
        plan,
        on_stage=lambda s, loss, sec: echo(
            f"      {s.name:<8} {s.note:<28} {s.steps:>4} steps  loss {loss:.3f}  {sec:5.1f}s"
        ),
    )
    seconds["train"] = time.perf_counter() - start

    hub_root = out / "hub"
    shutil.rmtree(hub_root, ignore_errors=True)
    with LocalHub(root=hub_root) as hub:
        publish_pool(hub, folders, plan)
        echo(f"      published {REPO_ID} (branches {', '.join(s.name for s in plan)}) on {hub.endpoint}")

        echo(f"[2/4] hf-recycle run {recipe} --push  (endpoint {hub.endpoint})")
        start = time.perf_counter()
        result = run(
            recipe, push=True, trials=trials, endpoint=hub.endpoint, token=LOCAL_TOKEN, output_dir=out
        )
        seconds["run"] = time.perf_counter() - start
        push_url = result.pushes[0].commit_url if result.pushes else None
        target = Recipe.from_yaml(recipe).push
        echo(
            f"[3/4] pushed the merged model and its card to {REPO_ID if target is None else target.repo}: {push_url}"
        )

    echo("[4/4] held-out scores (test split; the search never saw it)")
    start = time.perf_counter()
    results = result.results
    tasks = [t["name"] for t in results["tasks"]]
    table = _table(results, _checkpoint_rows(recipe, results, folders, plan))
    seconds["score"] = time.perf_counter() - start
    echo(format_table(table, tasks))
    summary = {"table": table, "tasks": tasks, "push_url": push_url, "seconds": seconds}
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    for picture in [out / "pareto.png", *([Path(figure)] if figure else [])]:
        plot_pareto(table, tasks, picture)
    echo(f"results: {out / 'results.json'}  picture: {out / 'pareto.png'}")
    return DemoResult(out, results, table, push_url, seconds)
