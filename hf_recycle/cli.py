"""The ``hf-recycle`` command line: a thin layer over the public API.

Each subcommand lives in ``hf_recycle/commands/<name>.py`` and exposes
``register(subparsers)``, which declares its options (importing nothing heavy), and
the function it sets as ``func``, which calls the library. User errors
(:class:`~hf_recycle.errors.HfRecycleError`) are printed as one paragraph without a
traceback and exit with status 1; ``--debug`` shows the traceback. SIGTERM ends a command as
Ctrl-C does, through an exception, so that partial outputs are removed (status 143).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import textwrap
import threading
from collections.abc import Iterator

from hf_recycle._version import __version__

#: Exit status when a reader closed stdout early: 128 + SIGPIPE, as a shell reports a process
#: that SIGPIPE ended (``yes | head`` under ``set -o pipefail``).
EXIT_BROKEN_PIPE = 141

#: Exit status after SIGTERM (128 + 15, as a shell reports a process that SIGTERM ended).
EXIT_TERMINATED = 143


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM while :func:`main` runs.

    A :class:`KeyboardInterrupt`, so that whatever cleans up after Ctrl-C (a merge's partial
    folder, a trial's state) cleans up after SIGTERM too, and ``except Exception`` lets it pass.
    """


# Subcommands in the order ``--help`` lists them.
COMMANDS = ["resolve", "merge", "score", "search", "run", "push", "validate", "hub"]

_DESCRIPTION = """\
Recycle the checkpoints a training run leaves behind: resolve Hub revisions,
merge full weights and LoRA adapters, score candidates on your tasks, search the
merge weights with Optuna, and push the best merge with a model card.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-recycle",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hf-recycle {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"hf_recycle.commands.{name}")
        except ModuleNotFoundError as exc:  # a command that has not landed yet
            if exc.name == f"hf_recycle.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


class _StderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is when a record is emitted.

    ``main`` may run in-process (tests, notebooks) where ``sys.stderr`` is swapped later; a
    handler holding the stream it was created with would write to a closed file.
    """

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


def _configure_logging(debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if debug else "%(message)s"))
    root = logging.getLogger("hf_recycle")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _format_error(exc: BaseException) -> str:
    message = str(exc).strip() or type(exc).__name__
    lines = message.splitlines()
    # never split a word: paths, specs and commands in a message stay whole, ready to copy
    first = textwrap.fill(
        lines[0], width=100, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False
    )
    return "\n".join([f"error: {first}", *lines[1:]])


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hf-recycle`` console script; returns the exit status.

    A reader that closes stdout early (``hf-recycle push --dry-run | head``) ends the command
    quietly with status 141, as a process killed by SIGPIPE: no traceback, no error message.
    SIGTERM (in the main thread) ends it like Ctrl-C, with status 143.
    """
    with _sigterm_raises():
        try:
            try:
                status = _main(argv)
            except SystemExit:  # argparse's --help, --version and usage errors
                sys.stdout.flush()
                raise
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
            return status
        except BrokenPipeError:
            _discard_stdout()
            return EXIT_BROKEN_PIPE
        except Terminated:
            print("terminated (SIGTERM)", file=sys.stderr)
            return EXIT_TERMINATED


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` in the block; the previous handler comes back after.

    Only the main thread can set signal handlers; elsewhere (``main`` called from a worker
    thread) SIGTERM keeps whatever handler it has.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _discard_stdout() -> None:
    """Point stdout at devnull so that the interpreter's final flush does not fail again.

    This is what the Python documentation recommends for SIGPIPE (see the ``signal`` module's
    notes on ``BrokenPipeError``).
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is not a file (a test's capture)
        pass


def _main(argv: list[str] | None) -> int:
    from hf_recycle.errors import DiskFullError, HfRecycleError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    _configure_logging(args.debug, args.quiet)
    try:
        result = args.func(args)
    except HfRecycleError as exc:
        if args.debug:
            raise
        print(_format_error(exc), file=sys.stderr)
        return 1
    except Terminated:  # reported by main
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from hf_recycle.outputs import is_disk_full

        if args.debug or not is_disk_full(exc):
            raise
        # a write that no stage wrapped: still one paragraph, not a traceback
        where = f" while writing '{exc.filename}'" if getattr(exc, "filename", None) else ""
        message = f"no space left on the disk{where}: free some space and run again"
        print(_format_error(DiskFullError(message)), file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
