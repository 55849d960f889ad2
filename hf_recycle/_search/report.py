"""The final report of a search: held-out scores, a paired bootstrap, results.json and results.md.

The winner (chosen by :mod:`hf_recycle._search.selection`; each Pareto member for
``pareto``) and the baselines are scored on each task's test split. The winner is compared
with the reference baseline (the baseline of highest validation score, else of highest
*search* score, so the choice does not peek at the test split) by a paired bootstrap: the test examples of every task are resampled with replacement, the same
indices for both models, and the statistic is the task-weighted macro-average of the
per-example scores (lower-is-better tasks negated). The interval is the percentile
interval of the difference winner − baseline.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hf_recycle._search.screening import screened_text

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"


def macro_of_means(
    per_example: Mapping[str, np.ndarray], weights: Mapping[str, float], higher_is_better: Mapping[str, bool]
) -> float:
    """Task-weighted mean of per-task means of per-example scores, lower-better tasks negated."""
    total = math.fsum(weights[t] for t in per_example)
    return (
        math.fsum(
            weights[t] * (1.0 if higher_is_better[t] else -1.0) * float(np.mean(values))
            for t, values in per_example.items()
        )
        / total
    )


def paired_bootstrap(
    a: Mapping[str, Sequence[float]],
    b: Mapping[str, Sequence[float]],
    weights: Mapping[str, float],
    higher_is_better: Mapping[str, bool],
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    return_samples: bool = False,
) -> dict[str, Any]:
    """Paired bootstrap of the difference ``a − b`` of the macro-average of per-example scores.

    Args:
        a: Per task, per-example scores of model A (the same examples, in the same order, as ``b``).
        b: Per task, per-example scores of model B.
        weights: Task weights.
        higher_is_better: Task directions.
        n_boot: Number of resamples.
        confidence: Coverage of the percentile interval.
        seed: Seed of the resampling.
        return_samples: Also return the resampled differences (``samples``).

    Returns:
        ``{"difference", "ci_low", "ci_high", "confidence", "n_boot", "p_not_better"}``, where
        ``p_not_better`` is the share of resamples where A does not beat B.

    Raises:
        ValueError: The two models were scored on different numbers of examples.
    """
    tasks = list(a)
    arrays_a = {t: np.asarray(a[t], dtype=np.float64) for t in tasks}
    arrays_b = {t: np.asarray(b[t], dtype=np.float64) for t in tasks}
    for t in tasks:
        if arrays_a[t].shape != arrays_b[t].shape or arrays_a[t].size == 0:
            raise ValueError(f"task '{t}': paired scores need the same non-empty examples for both models")
    sign = {t: 1.0 if higher_is_better[t] else -1.0 for t in tasks}
    total = math.fsum(weights[t] for t in tasks)
    diffs = {t: arrays_a[t] - arrays_b[t] for t in tasks}
    point = math.fsum(weights[t] * sign[t] * float(diffs[t].mean()) for t in tasks) / total
    rng = np.random.default_rng(seed)
    samples = np.zeros(n_boot)
    for t in tasks:
        n = diffs[t].size
        idx = rng.integers(0, n, size=(n_boot, n))
        samples += weights[t] * sign[t] * diffs[t][idx].mean(axis=1)
    samples /= total
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(samples, [alpha, 1.0 - alpha])
    out: dict[str, Any] = {
        "difference": point,
        "ci_low": float(low),
        "ci_high": float(high),
        "confidence": confidence,
        "n_boot": n_boot,
        "p_not_better": float(np.mean(samples <= 0)),
    }
    if return_samples:
        out["samples"] = samples
    return out


def scores_dict(values: Mapping[str, float], mean: float) -> dict[str, float]:
    """``{"<task>": value, ..., "mean": mean}``."""
    return {**{k: float(v) for k, v in values.items()}, "mean": float(mean)}


def write_results(folder: str | Path, results: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path_json, path_md = folder / RESULTS_JSON, folder / RESULTS_MD
    from hf_recycle.outputs import write_text_atomic  # never half a file, even on a full disk

    write_text_atomic(path_json, json.dumps(results, indent=2, allow_nan=True) + "\n")
    write_text_atomic(path_md, render_markdown(results))
    return path_json, path_md


def versus_baselines(
    results: Mapping[str, Any], entry: Mapping[str, Any] | None = None
) -> list[tuple[str, dict[str, Any], bool]]:
    """``(baseline, comparison, chosen)`` for every baseline compared on the test split.

    Args:
        results: The content of ``results.json``.
        entry: A Pareto member (an item of ``results["pareto"]``) to give the comparisons of,
            instead of the winner's.

    ``chosen`` marks the baseline of highest search mean (``results["comparison"]``). Results
    written before per-baseline comparisons existed give that one alone; without test splits
    the list is empty.
    """
    chosen = (results.get("comparison") or {}).get("baseline")
    source = results if entry is None else entry
    every = source.get("comparisons")
    if not every:
        comp = source.get("comparison")
        return [(chosen, dict(comp), True)] if chosen and comp and "difference" in comp else []
    return [
        (name, dict(comp), name == chosen) for name, comp in every.items() if comp and "difference" in comp
    ]


def format_score(value: Any) -> str:
    """A score or parameter as reports show it: 4 significant digits for floats, ``–`` for none."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_comparison(comp: Mapping[str, Any]) -> dict[str, str | None]:
    """The parts of one paired-bootstrap comparison as reports show them.

    Returns:
        ``difference`` (signed, ``+0.04``), ``interval`` (``[+0.01, +0.07]``), ``confidence``
        (``95%``), ``n_boot`` and ``p_not_better`` (``None`` when the comparison has none).
    """
    p = comp.get("p_not_better")
    return {
        "difference": f"{comp['difference']:+.4g}",
        "interval": f"[{comp['ci_low']:+.4g}, {comp['ci_high']:+.4g}]",
        "confidence": f"{int(round(comp['confidence'] * 100))}%",
        "n_boot": str(comp["n_boot"]),
        "p_not_better": None if p is None else f"{p:.3g}",
    }


def chosen_on(results: Mapping[str, Any]) -> str:
    """The split the reference baseline was chosen on: ``validation`` or ``search``."""
    return (
        "validation" if (results.get("comparison") or {}).get("chosen_by") == "validation mean" else "search"
    )


def returned_text(results: Mapping[str, Any]) -> str:
    """What the search returned, in words: ``optimized merge (trial 36)`` or ``the uniform soup (trial 0)``."""
    from hf_recycle._search.selection import baseline_label

    winner = results["winner"]
    if winner.get("baseline"):
        return f"the {baseline_label(winner['baseline'], winner.get('checkpoint'))} (trial {winner['trial']})"
    return f"optimized merge (trial {winner['trial']})"


def summary_text(results: Mapping[str, Any]) -> str:
    """The few lines a command prints when a search ends: the winner and why, then one line per baseline."""
    winner = results["winner"]
    scores = [
        f"{split} mean {winner[split]['mean']:.4g}"
        for split in ("search", "validation", "test")
        if winner.get(split)
    ]
    what = f"winner (trial {winner['trial']})"
    if winner.get("baseline"):
        what = f"returned {returned_text(results)}, not an optimized merge"
    lines = [f"{results['trials']} complete trials; {what}: " + ", ".join(scores)]
    selection = results.get("selection")
    if selection:
        lines.append(f"why: {selection['chosen_because']}")
    for name, comp, chosen in versus_baselines(results):
        f = format_comparison(comp)
        lines.append(
            f"vs {name} on test{f' (best on {chosen_on(results)})' if chosen else ''}: {f['difference']} "
            f"{f['interval']} ({f['confidence']} CI)"
        )
    if results.get("examples_scored"):
        from hf_recycle._search.racing import examples_text

        lines.append(examples_text(results["examples_scored"]))
    if screened_text(results):
        lines.append(screened_text(results))
    return "\n".join(lines)


def selection_markdown(results: Mapping[str, Any]) -> list[str]:
    """The lines of results.md that say how the winner was chosen (none for older results)."""
    selection = results.get("selection")
    if not selection:
        return []
    lines = [
        "",
        "## How the winner was chosen",
        "",
        f"Returned: {returned_text(results)}. {selection['chosen_because'][:1].upper()}{selection['chosen_because'][1:]}.",
        "",
        f"Rule: {selection['rule']} (alpha {format_score(selection['alpha'])}).",
    ]
    rows = selection.get("candidates") or []
    if rows:
        on_validation = selection["split"] == "validation"
        reference = selection.get("baseline") or "–"
        lines += [
            "",
            "| trial | search mean | "
            + ("validation mean | " if on_validation else "")
            + f"− {reference} | p | adjusted p | beats it |",
            "|---|---|" + ("---|" if on_validation else "") + "---|---|---|---|",
        ]
        for row in rows:
            lines.append(
                f"| {row['trial']} | {format_score(row['search'])} | "
                + (f"{format_score(row.get('validation'))} | " if on_validation else "")
                + (f"{row['difference']:+.4g}" if row.get("difference") is not None else "–")
                + f" | {format_score(row.get('p_value'))} | {format_score(row.get('p_adjusted'))} | "
                + ("yes" if row.get("passed") else "no" if "passed" in row else "–")
                + " |"
            )
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    """A human-readable summary of ``results`` (the content of results.md)."""
    tasks = [t["name"] for t in results["tasks"]]
    lines = [
        f"# Merge search: {results['name']}",
        "",
        f"{results['trials']} complete trials ({results['study']['sampler']} sampler, objective "
        f"`{results['study']['objective']}`, weights `{results['space']['weights']}`, granularity "
        f"`{results['space']['granularity']}`, merge method `{results['merge']['method']}`).",
        "",
        "| model | split | " + " | ".join(tasks) + " | mean |",
        "|---|---|" + "---|" * (len(tasks) + 1),
    ]
    winner_label = "**winner**"
    if results["winner"].get("baseline"):
        winner_label += f" (= {results['winner']['baseline']}, not an optimized merge)"
    rows: list[tuple[str, dict[str, Any]]] = [(winner_label, results["winner"])]
    rows += [(name, entry) for name, entry in results["baselines"].items()]
    for i, member in enumerate(results.get("pareto") or []):
        rows.append((f"pareto #{i} (trial {member['trial']})", member))
    for label, entry in rows:
        for split in ("search", "validation", "test"):
            scores = entry.get(split)
            if scores is None:
                continue
            lines.append(
                f"| {label} | {split} | "
                + " | ".join(format_score(scores.get(t)) for t in tasks)
                + f" | {format_score(scores.get('mean'))} |"
            )
    if results.get("examples_scored"):
        from hf_recycle._search.racing import examples_text

        text = examples_text(results["examples_scored"])
        lines += ["", f"{text[:1].upper()}{text[1:]}."]
    if screened_text(results):
        text = screened_text(results)
        lines += ["", f"{text[:1].upper()}{text[1:]}."]
    lines += selection_markdown(results)
    compared = versus_baselines(results)
    if compared:
        lines += [
            "",
            "Winner − baseline on the test split (macro-average of per-example scores, paired bootstrap):",
            "",
            "| baseline | difference | CI | P(not better) |",
            "|---|---|---|---|",
        ]
        for name, comp, chosen in compared:
            label = f"{name} (best on {chosen_on(results)})" if chosen else name
            f = format_comparison(comp)
            lines.append(
                f"| {label} | {f['difference']} | {f['confidence']} {f['interval']} | "
                f"{format_score(f['p_not_better'])} |"
            )
        lines += ["", f"{compared[0][1]['n_boot']} resamples."]
    lines += ["", "## Winner weights", "", "| checkpoint | weight |", "|---|---|"]
    for pin, w in zip(results["checkpoints"], results["winner"]["weights"], strict=True):
        lines.append(f"| {pin.get('spec') or pin.get('path')} | {w:.4f} |")
    for plot in results.get("plots", []):
        lines += ["", f"![{Path(plot).stem}]({plot})"]
    return "\n".join(lines) + "\n"
