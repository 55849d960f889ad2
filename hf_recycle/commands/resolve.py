"""``hf-recycle resolve SPEC...``: show the pinned checkpoints that specs expand to."""

from __future__ import annotations

import argparse
import json

from hf_recycle.commands import options

EPILOG = """\
examples:
  hf-recycle resolve EleutherAI/pythia-70m@step1000
  hf-recycle resolve 'org/run@step-*' --json
  hf-recycle resolve 'org/run@main:checkpoint-*' org/run@history ./local/ckpt
  hf-recycle resolve 'org/run@step-*' --endpoint http://127.0.0.1:8090 --lock outputs/demo

Specs: ./dir or /abs/dir (local folder), org/name (branch main), org/name@rev (branch,
tag or sha), org/name@rev:sub/folder, org/name@step-* (branches and tags matching the
glob, natural order), org/name@main:checkpoint-* (matching subfolders), org/name@history
(commits of main that changed weight files). Quote globs in the shell.

--json prints a list of objects with the keys repo_id, revision, commit, subfolder (null
at the root) and kind (full or lora); local folders add path. The token comes from
HF_TOKEN or `hf auth login` and is never printed.
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = options.add_command(
        sub,
        "resolve",
        help="pin checkpoint specs to commit shas (branches, tags, history, subfolders)",
        description="Expand checkpoint specs and pin each checkpoint to a commit sha.",
        epilog=EPILOG,
    )
    parser.add_argument("specs", nargs="+", metavar="SPEC")
    options.add_endpoint(parser)
    parser.add_argument("--json", action="store_true", help="print the pins as JSON")
    parser.add_argument("--lock", metavar="DIR", help="also write DIR/checkpoints.lock.json")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hf_recycle.hub.resolve import resolve

    pins = resolve(args.specs, endpoint=args.endpoint)
    if args.lock:
        from hf_recycle.hub.lock import write_lock

        write_lock(pins, args.lock)
    if args.json:
        print(json.dumps([pin.to_json() for pin in pins], indent=2))
        return 0
    rows = [("REPO", "REVISION", "COMMIT", "SUBFOLDER", "KIND")]
    for pin in pins:
        if pin.is_local:
            rows.append((str(pin.local_path), "-", "-", "-", pin.kind))
        else:
            rows.append(
                (pin.repo_id or "", pin.revision or "", pin.commit or "", pin.subfolder or "-", pin.kind)
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0
