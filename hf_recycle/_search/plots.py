"""PNG plots of a search (matplotlib, Agg backend): history, winner weights, Pareto picture."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_history(trials: list[dict[str, Any]], path: Path) -> Path:
    """Search mean of every complete trial and the best so far; baselines marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [t["number"] for t in trials]
    ys = [t["mean"] for t in trials]
    ax.scatter(xs, ys, s=12, color="0.6", label="trial")
    best, run = [], float("-inf")
    for y in ys:
        run = max(run, y)
        best.append(run)
    ax.step(xs, best, where="post", color="C0", label="best so far")
    for t in trials:
        if t.get("baseline"):
            ax.scatter([t["number"]], [t["mean"]], s=30, marker="s", color="C1")
    ax.scatter([], [], s=30, marker="s", color="C1", label="baseline")
    ax.set_xlabel("trial")
    ax.set_ylabel("search score (macro-average)")
    ax.set_title("Optimization history")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_weights(
    labels: list[str], weights: list[float], layer_weights: dict[str, list[float]] | None, path: Path
) -> Path:
    """The winner's weight per checkpoint (bars), and per layer group (heatmap) when searched."""
    plt = _pyplot()
    if layer_weights:
        import numpy as np

        groups = list(layer_weights)
        matrix = np.array([layer_weights[g] for g in groups])
        fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(labels) + 2), max(3, 0.4 * len(groups) + 1.5)))
        im = ax.imshow(matrix, aspect="auto", cmap="viridis")
        ax.set_yticks(range(len(groups)), groups)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        fig.colorbar(im, ax=ax, label="weight")
    else:
        fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(labels) + 2), 3.5))
        ax.bar(range(len(weights)), weights, color="C0")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_ylabel("weight")
    ax.set_title("Winner's merge weights")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_pareto(
    tasks: list[str],
    trials: list[dict[str, Any]],
    singles: list[dict[str, Any]],
    baselines: dict[str, dict[str, Any]],
    winners: list[dict[str, Any]],
    path: Path,
) -> Path:
    """Search scores of the two tasks: trials, single checkpoints, baselines and the winner(s)."""
    plt = _pyplot()
    a, b = tasks
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(
        [t["scores"][a] for t in trials], [t["scores"][b] for t in trials], s=10, color="0.7", label="trials"
    )
    ax.scatter(
        [s["scores"][a] for s in singles],
        [s["scores"][b] for s in singles],
        s=40,
        marker="o",
        color="C2",
        label="checkpoints",
    )
    for i, (name, entry) in enumerate(baselines.items()):
        ax.scatter(
            [entry["search"][a]], [entry["search"][b]], s=60, marker="s", color=f"C{i + 3}", label=name
        )
    ax.scatter(
        [w["search"][a] for w in winners],
        [w["search"][b] for w in winners],
        s=160,
        marker="*",
        color="C1",
        label="winner" if len(winners) == 1 else "Pareto front",
    )
    ax.set_xlabel(f"{a} (search)")
    ax.set_ylabel(f"{b} (search)")
    ax.set_title("Task trade-off")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
