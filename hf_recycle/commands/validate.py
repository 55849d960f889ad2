"""``hf-recycle validate RECIPE.yaml...``: check recipes without downloading anything."""

from __future__ import annotations

import argparse
import sys

from hf_recycle.commands import options

EPILOG = """\
examples:
  hf-recycle validate recipes/demo.yaml
  hf-recycle validate recipes/*.yaml

Every problem is reported at once as file:line: field: message; the exit status is
non-zero when any recipe is invalid. Besides the schema, the files the recipe names
are checked: task data files exist and their first row has the fields the templates
name, splits exist, metrics are bundled, local or cached (a warning when they must be
downloaded), lm_eval tasks exist (in lm-eval's registry or under include_path) and report
the metric key named, local checkpoint folders exist, and the trials cover the baselines
when the number of checkpoints is known without resolving a glob. Nothing is resolved or
downloaded.
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = options.add_command(
        sub,
        "validate",
        help="check recipe files (schema, data files, splits, metrics, trials) without downloading",
        description="Check recipe files and the files they name without downloading anything.",
        epilog=EPILOG,
    )
    parser.add_argument("recipes", nargs="+", metavar="RECIPE.yaml")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hf_recycle.errors import HfRecycleError
    from hf_recycle.preflight import check_file

    failed = 0
    for path in args.recipes:
        try:
            report = check_file(path)
        except HfRecycleError as exc:  # missing file, not YAML
            failed += 1
            print(str(exc), file=sys.stderr)
            continue
        if report.errors:
            failed += 1
            print(report.error_text(), file=sys.stderr)
        for line in report.warning_lines():
            print(line, file=sys.stderr)
        if report.recipe is not None and not report.errors:
            recipe = report.recipe
            print(
                f"ok: {path} ({recipe.name}: {len(recipe.checkpoints)} checkpoint spec(s), "
                f"{len(recipe.tasks)} task(s))"
            )
    if failed:
        print(f"{failed} of {len(args.recipes)} recipe(s) invalid", file=sys.stderr)
        return 1
    return 0
