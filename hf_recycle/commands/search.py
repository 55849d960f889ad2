"""``hf-recycle search``: optimize the merge weights of a recipe's checkpoints."""

from __future__ import annotations

import argparse

from hf_recycle.commands import options

EXAMPLES = """\
examples:
  hf-recycle search recipe.yaml
  hf-recycle search recipe.yaml --trials 80          # resume and extend to 80 finished trials
  hf-recycle search recipe.yaml --create-only --storage postgresql://user@db:5432/optuna
  hf-recycle search recipe.yaml --storage postgresql://user@db:5432/optuna   # on each worker
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Declare ``search`` and its options."""
    parser = options.add_command(
        subparsers,
        "search",
        help="search the merge weights with Optuna (CMA-ES by default) and report against baselines",
        description=(
            "Search the weights of a merge of the recipe's checkpoints, maximizing the task-weighted "
            "macro-average of the search-split scores (or the Pareto front of the tasks). Baselines (uniform "
            "soup, each single checkpoint, greedy soup) run as trials of the same study. Re-running resumes "
            "the study. Writes results.json, results.md and plots into the output folder."
        ),
        epilog=EXAMPLES,
    )
    parser.add_argument("recipe", metavar="RECIPE.yaml", help="the recipe file")
    options.add_study(parser)
    parser.add_argument(
        "--study", metavar="NAME", help="study name (default: search.study, else the recipe name)"
    )
    options.add_output(parser, help="output folder (default: the recipe's output.dir)")
    options.add_device(parser, default=None, help="where the live model runs")
    options.add_engine(parser)
    options.add_endpoint(parser, default="the recipe's endpoint, else HF_ENDPOINT, else huggingface.co")
    parser.add_argument(
        "--create-only",
        action="store_true",
        help="create the study in the storage, enqueue its baselines and exit (before workers start)",
    )
    parser.add_argument("--json", action="store_true", help="print results.json to stdout")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the search (or only create its study)."""
    import json
    import sys

    from hf_recycle._search.api import create_study, search

    where = dict(storage=args.storage, study=args.study, output_dir=args.output, endpoint=args.endpoint)
    if args.create_only:
        from hf_recycle._search.study import redact_url

        name = create_study(args.recipe, **where)
        again = [f"--study {name}"] + ([f"--storage {redact_url(args.storage)}"] if args.storage else [])
        print(
            f"study '{name}' is ready; start each worker with: hf-recycle search {args.recipe} {' '.join(again)}",
            file=sys.stderr,
        )
        return 0
    results = search(
        args.recipe,
        trials=args.trials,
        device=args.device,
        progress=not getattr(args, "quiet", False),
        engine=args.engine,
        **where,
    )
    if args.json:
        print(json.dumps(results.to_json(), indent=2))
    else:
        from hf_recycle._search.report import summary_text

        print(summary_text(results))
    return 0
