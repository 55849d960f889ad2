"""``hf-recycle search``: optimize the merge weights of a recipe's checkpoints."""

from __future__ import annotations

import argparse

EXAMPLES = """\
examples:
  hf-recycle search recipe.yaml
  hf-recycle search recipe.yaml --trials 80          # resume and extend to 80 finished trials
  hf-recycle search recipe.yaml --create-only --storage postgresql://user@db:5432/optuna
  hf-recycle search recipe.yaml --storage postgresql://user@db:5432/optuna   # on each worker
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Declare ``search`` and its options."""
    parser = subparsers.add_parser(
        "search",
        help="search the merge weights with Optuna (CMA-ES by default) and report against baselines",
        description=(
            "Search the weights of a merge of the recipe's checkpoints, maximizing the task-weighted "
            "macro-average of the search-split scores (or the Pareto front of the tasks). Baselines (uniform "
            "soup, each single checkpoint, greedy soup) run as trials of the same study. Re-running resumes "
            "the study. Writes results.json, results.md and plots into the output folder."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("recipe", metavar="RECIPE.yaml", help="the recipe file")
    parser.add_argument(
        "--trials", type=int, metavar="N", help="finished trials the study should hold, baselines included"
    )
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage: sqlite:///path.db, postgresql://..., journal:/path.log (default: <output>/study.db)",
    )
    parser.add_argument(
        "--study", metavar="NAME", help="study name (default: search.study, else the recipe name)"
    )
    parser.add_argument(
        "--output", "-o", metavar="DIR", help="output folder (default: the recipe's output.dir)"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where the live model runs")
    parser.add_argument(
        "--create-only",
        action="store_true",
        help="create the study in the storage and exit (before workers start)",
    )
    parser.add_argument("--json", action="store_true", help="print results.json to stdout")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the search (or only create its study)."""
    import json
    import sys

    from hf_recycle.search.api import create_study, search

    if args.create_only:
        name = create_study(args.recipe, storage=args.storage, study=args.study, output_dir=args.output)
        print(
            f"study '{name}' is ready; start the workers with: hf-recycle search {args.recipe}",
            file=sys.stderr,
        )
        return 0
    results = search(
        args.recipe,
        trials=args.trials,
        storage=args.storage,
        study=args.study,
        output_dir=args.output,
        device=args.device,
        progress=not getattr(args, "quiet", False),
    )
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        winner = results["winner"]
        print(
            f"{results['trials']} complete trials; winner (trial {winner['trial']}): search mean "
            f"{winner['search']['mean']:.4g}"
            + (f", test mean {winner['test']['mean']:.4g}" if winner.get("test") else "")
        )
        comp = results.get("comparison")
        if comp and "difference" in comp:
            print(
                f"vs {comp['baseline']} on test: {comp['difference']:+.4g} "
                f"[{comp['ci_low']:+.4g}, {comp['ci_high']:+.4g}] ({int(comp['confidence'] * 100)}% CI)"
            )
    return 0
