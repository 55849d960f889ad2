"""``hf-recycle push --repo ORG/NAME``: upload a merged model folder to the Hub in one commit."""

from __future__ import annotations

import argparse

from hf_recycle.commands import options

EPILOG = """\
examples:
  hf-recycle push --repo my-org/tiny-lm-recycled --from outputs/demo/model
  hf-recycle push --repo my-org/tiny-lm-recycled --from outputs/demo/model --branch v2 --message "CMA-ES, 40 trials"
  hf-recycle push --repo my-org/tiny-lm-recycled --from outputs/demo/model --create-pr
  hf-recycle push --repo my-org/tiny-lm-recycled --from outputs/demo/model --dry-run

The repo is created when missing (--private applies then), the branch is created from
main when missing, and the folder is uploaded in one commit (large files go through LFS);
the commit URL is printed. When every file is already on the branch no commit is made, and
the URL of the commit the branch points at is printed. Study databases (*.db) and hidden
files are not uploaded.
The token comes from HF_TOKEN or `hf auth login` and is never printed. A failed push
leaves the folder as it was and prints the command that retries it.
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Declare ``push`` and its options."""
    parser = options.add_command(
        sub,
        "push",
        help="upload a merged model folder to a Hub repo in one commit",
        description="Upload a merged model folder (weights, model card, lock file, results) to a Hub repo.",
        epilog=EPILOG,
    )
    parser.add_argument(
        "--repo", required=True, metavar="ORG/NAME", help="the Hub repo (created when missing)"
    )
    parser.add_argument(
        "--from",
        dest="folder",
        default=".",
        metavar="DIR",
        help="folder to upload (default: the current folder)",
    )
    parser.add_argument(
        "--branch", metavar="B", help="branch to commit to, created when missing (default: main)"
    )
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument(
        "--private", action="store_true", help="create the repo private (when it does not exist)"
    )
    parser.add_argument("--message", metavar="M", help="commit title")
    options.add_endpoint(parser)
    parser.add_argument("--dry-run", action="store_true", help="print what would be uploaded and stop")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Push (or plan the push of) ``args.folder``."""
    from hf_recycle.hub.push import plan_push, push_folder

    if args.dry_run:
        plan = plan_push(
            args.folder, args.repo, branch=args.branch, create_pr=args.create_pr, private=args.private
        )
        print(plan.describe())
        return 0
    result = push_folder(
        args.folder,
        args.repo,
        branch=args.branch,
        create_pr=args.create_pr,
        private=args.private,
        message=args.message,
        endpoint=args.endpoint,
    )
    print(result.pr_url or result.commit_url)
    return 0
