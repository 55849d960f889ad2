"""``python -m hf_recycle.demo``: the ``make demo`` walkthrough (see :mod:`hf_recycle.demo.run`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run the demo."""
    parser = argparse.ArgumentParser(prog="python -m hf_recycle.demo", description=__doc__)
    parser.add_argument("--output", default="outputs/demo", help="output folder (default: outputs/demo)")
    parser.add_argument(
        "--steps-scale", type=float, default=1.0, help="multiply every training stage's steps"
    )
    parser.add_argument("--trials", type=int, default=None, help="search trials (default: the recipe's)")
    parser.add_argument(
        "--figure", default=None, help="also save the Pareto picture here (docs/demo_pareto.png)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: reproducible)")
    args = parser.parse_args(argv)

    # Keep the demo's downloads out of the user's Hub cache, and never reach the real Hub.
    os.environ.setdefault("HF_HUB_CACHE", os.path.abspath(os.path.join(args.output, "hf-cache")))
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # One line per step is enough: no per-file progress bars (the search keeps its own).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import torch

    torch.set_num_threads(args.threads)
    from hf_recycle.demo.run import run_demo

    run_demo(
        args.output,
        steps_scale=args.steps_scale,
        trials=args.trials,
        figure=args.figure,
        progress=sys.stderr.isatty(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
