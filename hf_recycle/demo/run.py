"""``make demo``: train a pool, serve it on a local Hub, recycle it with ``recipes/demo.yaml``.

Steps: (1) train the pool (:mod:`hf_recycle.demo.pool`) and publish it to a local
Hub-compatible server on 127.0.0.1 as ``demo/tiny-lm`` (branch ``base`` and one
``step-*`` branch per checkpoint); (2) run the recipe against that server with
:func:`hf_recycle.pipeline.run`; (3) push the merged model and its card to the same
server, and score the pushed model again from the server to check that it is the model
the search measured; (4) score every checkpoint on the held-out split and print the table,
with how the optimized merge compares to the baselines and how many checkpoints it uses.
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
# A checkpoint "gets weight" in the merge when its normalized weight is at least this much.
WEIGHT_THRESHOLD = 0.02


@dataclass
class DemoResult:
    """What the demo did.

    Attributes:
        output_dir: The run's output folder (``results.json``, ``model/``, ``demo.json``...).
        results: The pipeline's ``results.json`` content.
        table: The rows printed: one per checkpoint, baseline and the optimized merge.
        push_url: Where the merged model went (commit URL on the local Hub).
        pushed_test: Held-out scores of the pushed model, downloaded from the local Hub.
        summary: The optimized merge against the baselines (see :func:`summarize`).
        seconds: Wall time of each step.
    """

    output_dir: Path
    results: dict[str, Any]
    table: list[dict[str, Any]]
    push_url: str | None
    pushed_test: dict[str, float] | None
    summary: dict[str, Any]
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
    from hf_recycle._score.api import score

    notes = {s.name: s.note for s in plan}
    rows = []
    for entry in results["checkpoints"]:
        name = entry.get("revision") or entry["spec"].split("@")[-1]
        report = score(folders[name], recipe_path, split="test", device="cpu", dtype="float32")
        rows.append(
            {"name": name, "kind": "checkpoint", "note": notes.get(name, ""), "test": report.to_json()}
        )
    return rows


#: The baselines' names in results.json -> how the demo's table and picture name them.
BASELINE_LABELS = {"uniform": "uniform soup", "best_single": "best single", "greedy_soup": "greedy soup"}


def _table(results: dict[str, Any], checkpoints: list[dict]) -> list[dict[str, Any]]:
    rows = list(checkpoints)
    for name, entry in results["baselines"].items():
        note = ""
        if name == "best_single":
            note = checkpoints[entry["checkpoint"]]["name"]
        elif name == "greedy_soup":
            note = " + ".join(checkpoints[i]["name"] for i in entry["members"])
        rows.append(
            {
                "name": BASELINE_LABELS.get(name, name),
                "kind": "baseline",
                "note": note,
                "test": _flat(entry["test"]),
            }
        )
    rows.append(
        {
            "name": returned_label(results),
            "kind": "merge",
            "note": f"CMA-ES, trial {results['winner']['trial']}"
            if results["winner"].get("baseline") is None
            else "no optimized merge beat it (see results.md)",
            "test": _flat(results["winner"]["test"]),
            "weights": results["winner"]["weights"],
        }
    )
    return rows


def returned_label(results: dict[str, Any]) -> str:
    """What the search returned: ``optimized merge``, or the baseline no optimized merge beat."""
    baseline = results["winner"].get("baseline")
    return "optimized merge" if baseline is None else f"returned: {BASELINE_LABELS.get(baseline, baseline)}"


def _flat(scores: dict[str, float]) -> dict[str, Any]:
    return {"scores": {k: v for k, v in scores.items() if k != "mean"}, "mean": scores["mean"]}


def summarize(results: dict[str, Any], threshold: float = WEIGHT_THRESHOLD) -> dict[str, Any]:
    """The optimized merge against the baselines, on the held-out split, and the weights it uses.

    Args:
        results: The pipeline's ``results.json`` content.
        threshold: A checkpoint is used when its (normalized) merge weight is at least this.

    Returns:
        ``{"merge": mean, "baselines": {name: mean}, "margins": {name: merge - baseline},
        "beats": {name: merge > baseline}, "weight_threshold", "checkpoints_used", "checkpoints"}``,
        every mean the held-out macro-average.
    """
    merge = results["winner"]["test"]["mean"]
    baselines = {name: entry["test"]["mean"] for name, entry in results["baselines"].items()}
    weights = results["winner"]["weights"]
    return {
        "returned": returned_label(results),
        "merge": merge,
        "baselines": baselines,
        "margins": {name: merge - mean for name, mean in baselines.items()},
        "beats": {name: merge > mean for name, mean in baselines.items()},
        "weight_threshold": threshold,
        "checkpoints_used": sum(w >= threshold for w in weights),
        "checkpoints": len(weights),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """One line per baseline (the merge's held-out margin over it), then the weights line."""
    lines = [
        f"{summary['returned']} {summary['merge']:.3f} vs {BASELINE_LABELS.get(name, name)} {mean:.3f}: "
        f"{summary['margins'][name]:+.3f} ({'better' if summary['beats'][name] else 'not better'})"
        for name, mean in summary["baselines"].items()
    ]
    lines.append(
        f"{summary['checkpoints_used']} of {summary['checkpoints']} checkpoints have merge weight "
        f">= {summary['weight_threshold']:g}"
    )
    return "\n".join(lines)


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


def _pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes, sorted by the first axis."""
    front = [p for p in points if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)]
    return sorted(set(front))


def plot_pareto(
    rows: list[dict[str, Any]], tasks: list[str], path: str | Path, threshold: float = WEIGHT_THRESHOLD
) -> Path:
    """The held-out picture: the two task axes (checkpoints, baselines, the merge) and the merge weights.

    Left: every checkpoint (its marker area grows with its merge weight), the checkpoints'
    Pareto front, the baselines and the optimized merge, with dotted lines of equal
    macro-average. Right: the merge weight of each checkpoint and the ``threshold``.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    a, b = tasks[:2]
    checkpoints = [r for r in rows if r["kind"] == "checkpoint"]
    merge = next(r for r in rows if r["kind"] == "merge")
    weights = merge["weights"]
    fig, (ax, wax) = plt.subplots(1, 2, figsize=(11.5, 5.2), dpi=110, gridspec_kw={"width_ratios": [1.6, 1]})

    for level in (0.5, 0.6, 0.7, 0.8, 0.9):  # the macro-average of two tasks is constant on x + y = 2 level
        ax.plot([2 * level - 1.05, 1.05], [1.05, 2 * level - 1.05], ls=":", lw=0.8, color="0.7", zorder=1)
        x, y = 2 * level - 1, 1.0  # where the line enters the box
        ax.annotate(
            f"mean {level:.1f}", (x, y), xytext=(3, -9), textcoords="offset points", fontsize=7, color="0.5"
        )
    xy = [(r["test"]["scores"][a], r["test"]["scores"][b]) for r in checkpoints]
    front = _pareto_front(xy)
    ax.plot(
        [p[0] for p in front],
        [p[1] for p in front],
        ls="--",
        lw=1,
        color="0.5",
        zorder=2,
        label="checkpoints' Pareto front",
    )
    for (x, y), row, w in zip(xy, checkpoints, weights, strict=True):
        ax.scatter([x], [y], s=30 + 900 * w, color="0.55", alpha=0.75, edgecolor="0.2", zorder=3)
        ax.annotate(row["name"], (x, y), textcoords="offset points", xytext=(7, -3), fontsize=8)
    ax.scatter([], [], s=60, color="0.55", edgecolor="0.2", label="checkpoint (area ~ merge weight)")
    colors = {
        BASELINE_LABELS["uniform"]: "tab:blue",
        BASELINE_LABELS["best_single"]: "tab:green",
        BASELINE_LABELS["greedy_soup"]: "tab:purple",
    }
    for row in rows:
        if row["kind"] != "baseline":
            continue
        x, y = row["test"]["scores"][a], row["test"]["scores"][b]
        label = f"{row['name']} ({row['test']['mean']:.3f})"
        ax.scatter(
            [x], [y], marker="s", s=70, color=colors.get(row["name"], "tab:blue"), zorder=4, label=label
        )
    x, y = merge["test"]["scores"][a], merge["test"]["scores"][b]
    ax.scatter(
        [x],
        [y],
        marker="*",
        s=380,
        color="tab:red",
        edgecolor="k",
        zorder=5,
        label=f"{merge['name']} ({merge['test']['mean']:.3f})",
    )
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(f"{a} (held-out exact match)")
    ax.set_ylabel(f"{b} (held-out exact match)")
    ax.set_title("Held-out scores: checkpoints, baselines, the returned model", fontsize=10)
    ax.legend(loc="lower left", fontsize=7.5, framealpha=0.9)

    names = [f"{r['name']}: {r['note']}" if r["note"] else r["name"] for r in checkpoints]
    used = [w >= threshold for w in weights]
    wax.barh(names, weights, color=["tab:red" if u else "0.7" for u in used])
    wax.axvline(threshold, color="k", lw=0.8, ls="--")
    wax.annotate(
        f"{threshold:g}", (threshold, len(names) - 0.4), fontsize=7, xytext=(3, 0), textcoords="offset points"
    )
    wax.invert_yaxis()
    wax.set_xlabel("merge weight (normalized)")
    wax.set_title(
        f"{merge['name'][:1].upper()}{merge['name'][1:]}: {sum(used)} of {len(names)} checkpoints >= {threshold:g}",
        fontsize=10,
    )
    for i, w in enumerate(weights):
        wax.annotate(f"{w:.3f}", (w, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    wax.set_xlim(0, max(weights) * 1.25)
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
    progress: bool = False,
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
        progress: Show a progress bar during the search.
        echo: Where progress lines go.
    """
    import shutil

    from hf_recycle._score.api import score
    from hf_recycle.pipeline import run
    from hf_recycle.recipe import Recipe
    from hf_recycle.testing.local_hub import LocalHub

    out = Path(output_dir)
    recipe = Path(recipe)
    for stale in ("study.db", "results.json", "results.md", "model", "plots", "demo.json"):
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
            f"      {s.name:<8} {s.note:<32} {s.steps:>4} steps  lr {s.lr:<6g} loss {loss:.3f}  {sec:5.1f}s"
        ),
    )
    seconds["train"] = time.perf_counter() - start

    hub_root = out / "hub"
    shutil.rmtree(hub_root, ignore_errors=True)
    with LocalHub(root=hub_root) as hub:
        publish_pool(hub, folders, plan)
        echo(
            f"      published {REPO_ID} (branches base, {', '.join(s.name for s in plan)}) on {hub.endpoint}"
        )

        echo(f"[2/4] hf-recycle run {recipe} --push  (endpoint {hub.endpoint})")
        start = time.perf_counter()
        result = run(
            recipe,
            push=True,
            trials=trials,
            endpoint=hub.endpoint,
            token=hub.token,
            output_dir=out,
            progress=progress,
        )
        seconds["run"] = time.perf_counter() - start
        push = result.pushes[0] if result.pushes else None
        push_url = push.commit_url if push else None
        target = Recipe.from_yaml(recipe).push
        echo(
            f"[3/4] pushed the merged model and its card to {REPO_ID if target is None else target.repo}: {push_url}"
        )
        pushed_test = None
        if push is not None:
            # Download the pushed model from the server and score it again: it must be the
            # model the search measured (same held-out scores as the winner).
            report = score(
                f"{push.repo_id}@{push.commit_sha}",
                recipe,
                split="test",
                device="cpu",
                dtype="float32",
                endpoint=hub.endpoint,
                token=hub.token,
            ).to_json()
            pushed_test = {**report["scores"], "mean": report["mean"]}
            echo(f"      the pushed model, downloaded again, scores {pushed_test['mean']:.3f} held-out")

    echo("[4/4] held-out scores (test split; the search never saw it)")
    start = time.perf_counter()
    results = result.results
    tasks = [t["name"] for t in results["tasks"]]
    table = _table(results, _checkpoint_rows(recipe, results, folders, plan))
    summary = summarize(results)
    seconds["score"] = time.perf_counter() - start
    echo(format_table(table, tasks))
    echo(format_summary(summary))
    record = {
        "table": table,
        "tasks": tasks,
        "summary": summary,
        "push_url": push_url,
        "pushed_test": pushed_test,
        "seconds": seconds,
    }
    (out / "demo.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    for picture in [out / "pareto.png", *([Path(figure)] if figure else [])]:
        plot_pareto(table, tasks, picture)
    echo(f"results: {out / 'results.json'}  picture: {out / 'pareto.png'}")
    return DemoResult(out, results, table, push_url, pushed_test, summary, seconds)
