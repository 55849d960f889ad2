"""Options that several ``hf-recycle`` subcommands share, declared once so that they read alike.

Only :mod:`argparse` is imported here: building the parser must stay fast. The global
``--debug`` and ``--quiet`` live in :mod:`hf_recycle.cli`. There is deliberately no
``--token`` option: a token on the command line ends up in shell history and process
lists, so the token comes from ``HF_TOKEN`` or ``hf auth login``.
"""

from __future__ import annotations

import argparse

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def add_command(
    sub: argparse._SubParsersAction, name: str, *, help: str, description: str, epilog: str
) -> argparse.ArgumentParser:
    """Add subcommand ``name`` with its one-line help, description and examples epilog."""
    return sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_endpoint(parser: argparse.ArgumentParser, default: str = "HF_ENDPOINT, else huggingface.co") -> None:
    """``--endpoint URL``: the Hub to talk to (``None`` when not given: the default applies)."""
    parser.add_argument("--endpoint", metavar="URL", help=f"Hub endpoint (default: {default})")


def add_device(parser: argparse.ArgumentParser, *, default: str | None, help: str) -> None:
    """``--device auto|cpu|cuda``."""
    parser.add_argument("--device", default=default, choices=DEVICES, help=help)


def add_dtype(parser: argparse.ArgumentParser, *, help: str) -> None:
    """``--dtype auto|float32|bfloat16|float16`` (default ``auto``)."""
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help=help)


def add_engine(parser: argparse.ArgumentParser) -> None:
    """``--engine NAME``: the scoring engine, one of the engine registry's (no torch is imported)."""
    from hf_recycle._score.engines import ENGINES

    parser.add_argument(
        "--engine",
        choices=tuple(ENGINES),
        metavar="NAME",
        help=f"scoring engine: {' or '.join(ENGINES)} (default: the recipe's engine:, else hf; "
        "vllm needs make install-vllm)",
    )


def add_output(parser: argparse.ArgumentParser, *, required: bool = False, help: str) -> None:
    """``--output/-o DIR``."""
    parser.add_argument("--output", "-o", required=required, metavar="DIR", help=help)


def add_study(parser: argparse.ArgumentParser) -> None:
    """``--trials N`` and ``--storage URL`` of a merge-weight search."""
    parser.add_argument(
        "--trials", type=int, metavar="N", help="finished trials the study should hold, baselines included"
    )
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage: sqlite:///path.db, postgresql://..., journal:/path.log (default: <output>/study.db)",
    )
