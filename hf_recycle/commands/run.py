"""``hf-recycle run RECIPE.yaml``: search, final merge, model card and push, end to end."""

from __future__ import annotations

import argparse

from hf_recycle.commands import options

EPILOG = """\
examples:
  hf-recycle run recipes/demo.yaml --dry-run        # print the pins, trial budget and outputs
  hf-recycle run recipes/demo.yaml                  # search, merge the winner, write the model card
  hf-recycle run recipes/demo.yaml --push           # ... and push it to the recipe's push: repo
  hf-recycle run recipes/demo.yaml --trials 80      # resume the study and extend it to 80 trials

Outputs under output.dir: results.json, results.md, plots/, checkpoints.lock.json and the
study (study.db), and the merged model in model/ (pareto: pareto/trial-<N>/ per front
member) with its README.md model card, ready for `hf-recycle push --from`. Re-running
resumes the study and skips a final merge already on disk. The token comes from HF_TOKEN
or `hf auth login` and is never printed.
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Declare ``run`` and its options."""
    parser = options.add_command(
        sub,
        "run",
        help="run a recipe end to end: search, final merge, model card, push",
        description=(
            "Run a recipe: resolve and download the checkpoints, search the merge weights (resuming the study), "
            "stream the winner's merge to disk, write results, lock file and model card, and push when asked."
        ),
        epilog=EPILOG,
    )
    parser.add_argument("recipe", metavar="RECIPE.yaml", help="the recipe file")
    parser.add_argument(
        "--push", action="store_true", help="push the merged model to the recipe's push: repo"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan (pins, trials, outputs) and stop"
    )
    options.add_study(parser)
    options.add_output(parser, help="output folder (default: the recipe's output.dir)")
    options.add_endpoint(parser, default="the recipe's endpoint, else HF_ENDPOINT, else huggingface.co")
    options.add_device(parser, default=None, help="where the search's live model runs")
    options.add_engine(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run (or plan) the recipe."""
    from hf_recycle.pipeline import run as run_recipe

    outcome = run_recipe(
        args.recipe,
        push=args.push,
        dry_run=args.dry_run,
        trials=args.trials,
        storage=args.storage,
        endpoint=args.endpoint,
        output_dir=args.output,
        device=args.device,
        progress=not getattr(args, "quiet", False),
        engine=args.engine,
    )
    if args.dry_run:
        print(outcome.describe())
        return 0
    from hf_recycle._search.report import summary_text

    print(summary_text(outcome.results))
    for folder in outcome.model_dirs:
        print(f"merged model: {folder}")
    for pushed in outcome.pushes:
        print(f"pushed to {pushed.repo_id}@{pushed.branch}: {pushed.pr_url or pushed.commit_url}")
    return 0
