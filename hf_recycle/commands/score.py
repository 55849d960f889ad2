"""``hf-recycle score MODEL_SPEC --recipe RECIPE.yaml``: score one model on a recipe's tasks."""

from __future__ import annotations

import argparse
import json

from hf_recycle.commands import options

EPILOG = """\
examples:
  hf-recycle score ./outputs/demo/merged --recipe recipes/demo.yaml
  hf-recycle score org/run@main:checkpoint-500 --recipe tasks.yaml --split test --json
  hf-recycle score ./outputs/demo/merged --recipe recipes/demo.yaml --engine vllm

Only the recipe's tasks: and engine: sections are read. --json prints
{"scores": {"<task>": value, ...}, "mean": value}, where mean is the task-weighted
average with lower-is-better tasks (perplexity) entering as -value.
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = options.add_command(
        sub,
        "score",
        help="score one model on a recipe's tasks",
        description="Score one model (local folder or Hub spec) on the tasks of a recipe.",
        epilog=EPILOG,
    )
    parser.add_argument(
        "model", metavar="MODEL_SPEC", help="local checkpoint folder or Hub spec (one checkpoint)"
    )
    parser.add_argument(
        "--recipe", required=True, metavar="RECIPE.yaml", help="recipe whose tasks: section to score"
    )
    parser.add_argument(
        "--split", choices=("search", "test"), default="search", help="split to score (default: search)"
    )
    parser.add_argument(
        "--limit", type=int, default=None, metavar="K", help="score only the first K examples per task"
    )
    options.add_device(parser, default="auto", help="where the model runs (default: CUDA when present)")
    options.add_dtype(parser, help="default: bfloat16 on GPU, float32 on CPU")
    options.add_engine(parser)
    options.add_endpoint(parser)
    parser.add_argument("--json", action="store_true", help="print the scores as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hf_recycle._score.api import score

    report = score(
        args.model,
        args.recipe,
        split=args.split,
        limit=args.limit,
        device=args.device,
        dtype=args.dtype,
        endpoint=args.endpoint,
        engine=args.engine,
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    width = max(len(name) for name in report.results)
    for name, result in report.results.items():
        direction = "higher is better" if result.higher_is_better else "lower is better"
        print(f"{name:<{width}}  {result.value:.6g}  ({len(result.per_example)} examples, {direction})")
    print(f"{'mean':<{width}}  {report.mean:.6g}")
    return 0
