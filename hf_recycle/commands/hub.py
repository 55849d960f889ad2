"""``hf-recycle hub serve``: a local Hub-compatible server for tests and CI."""

from __future__ import annotations

import argparse

from hf_recycle.commands import options

EPILOG = """\
examples:
  hf-recycle hub serve --root ./local-hub --port 8090 &
  HF_ENDPOINT=http://127.0.0.1:8090 hf-recycle resolve 'demo/tiny-lm@step-*'
  HF_ENDPOINT=http://127.0.0.1:8090 python -c "from huggingface_hub import HfApi; HfApi().upload_folder(...)"

The server stores repos under --root (blobs and commits by sha, branches and tags) and
keeps them across restarts. It speaks the part of the Hub API that huggingface_hub uses
to create repos, commit files, create branches and tags, list refs, commits and trees,
read repo info and download files. It accepts any token; private repos need one. It
prints its URL on the first line of stdout; with --port 0 (the default) the port is free.
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = options.add_command(
        sub,
        "hub",
        help="local Hub-compatible server for tests and CI",
        description="Local Hub-compatible server for tests and CI.",
        epilog=EPILOG,
    )
    hub_sub = parser.add_subparsers(dest="hub_command", metavar="HUB_COMMAND")
    serve = options.add_command(
        hub_sub,
        "serve",
        help="serve repos stored under --root",
        description="Serve repos stored under --root over the Hub HTTP API.",
        epilog=EPILOG,
    )
    serve.add_argument("--root", required=True, metavar="DIR", help="storage folder (created if missing)")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=0, metavar="P", help="port (default: 0, a free port)")
    serve.set_defaults(func=run_serve)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def run_serve(args: argparse.Namespace) -> int:
    from hf_recycle.testing.server import serve

    serve(args.root, host=args.host, port=args.port)
    return 0
