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
non-zero when any recipe is invalid. Nothing is resolved or downloaded.
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = options.add_command(
        sub,
        "validate",
        help="check recipe files (schema, specs, splits) without downloading",
        description="Check recipe files against the schema without downloading anything.",
        epilog=EPILOG,
    )
    parser.add_argument("recipes", nargs="+", metavar="RECIPE.yaml")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hf_recycle.errors import HfRecycleError
    from hf_recycle.recipe import Recipe

    failed = 0
    for path in args.recipes:
        try:
            recipe = Recipe.from_yaml(path)
        except HfRecycleError as exc:
            failed += 1
            print(str(exc), file=sys.stderr)
            continue
        print(
            f"ok: {path} ({recipe.name}: {len(recipe.checkpoints)} checkpoint spec(s), {len(recipe.tasks)} task(s))"
        )
    if failed:
        print(f"{failed} of {len(args.recipes)} recipe(s) invalid", file=sys.stderr)
        return 1
    return 0
