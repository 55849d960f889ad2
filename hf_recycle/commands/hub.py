"""``hf-recycle hub serve``: a local Hub-compatible server for tests, CI and offline work."""

from __future__ import annotations

import argparse
import os

from hf_recycle.commands import options

TOKEN_ENV = "HF_RECYCLE_HUB_TOKEN"

EPILOG = f"""\
examples:
  export {TOKEN_ENV}="$(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
  hf-recycle hub serve --root ./local-hub --port 8090 &
  export HF_ENDPOINT=http://127.0.0.1:8090 HF_TOKEN="${TOKEN_ENV}"
  hf-recycle resolve 'demo/tiny-lm@step-*'
  python -c "from huggingface_hub import HfApi; HfApi().upload_folder(...)"

The server stores repos under --root (blobs and commits by sha, branches and tags) and
keeps them across restarts. It speaks the part of the Hub API that huggingface_hub uses
to create repos, commit files, create branches and tags, list refs, commits and trees,
read repo info, validate model cards and download files.

Every write and every read of a private repo needs the token (clients send it as
HF_TOKEN); a wrong token is refused. The token is --token, else ${TOKEN_ENV},
else a random one printed once on stderr. --token shows in shell history and in `ps`:
prefer the variable. The server binds loopback only: another --host needs --allow-remote
(plain HTTP: trusted networks only). Nothing outside --root is read or written. It prints
its URL on the first line of stdout; with --port 0 (the default) the port is free. It does
not imitate LFS/Xet uploads, pull requests, users and permissions, nor rate limits.
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
    serve.add_argument(
        "--token",
        metavar="T",
        help=f"token for writes and private reads (default: ${TOKEN_ENV}, else a random one printed once)",
    )
    serve.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --host that other machines can reach (plain HTTP: trusted networks only)",
    )
    serve.set_defaults(func=run_serve)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def run_serve(args: argparse.Namespace) -> int:
    from hf_recycle.testing.server import serve

    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    serve(args.root, host=args.host, port=args.port, token=token, allow_remote=args.allow_remote)
    return 0
