"""Push a merged model folder to a Hub repo: create the repo and branch when missing, one commit.

The token is found the huggingface_hub way (``token=`` argument, else ``HF_TOKEN``, else
the stored ``hf auth login``); it is never printed, logged or written. Large files go
through huggingface_hub's ``upload_folder`` (LFS on the Hub). A failed push raises
:class:`~hf_recycle.errors.HubPushError`, leaves the local folder untouched and says how
to retry.
"""

from __future__ import annotations

import logging
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from hf_recycle.errors import HfRecycleError, HubPushError

logger = logging.getLogger(__name__)

__all__ = [
    "push_folder",
    "plan_push",
    "repo_visibility",
    "PushResult",
    "PushPlan",
    "IGNORE_PATTERNS",
    "retry_command",
]

#: Files of an output folder that never go to the Hub (the Optuna study, temporary files).
IGNORE_PATTERNS = ["*.db", "*.db-journal", "*.db-wal", "*.db-shm", "*.log", "*.tmp", ".*", ".*/**"]

_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class PushResult:
    """One finished push.

    Attributes:
        repo_id: The repo pushed to.
        branch: The branch the commit went to (``main`` unless told otherwise).
        commit_url: URL of the commit at the head of ``branch`` after the push: the new commit,
            or, when no file changed, the commit that already held them (the pull request's
            commit with ``create_pr``).
        commit_sha: Sha of that commit.
        pr_url: URL of the pull request, with ``create_pr``.
        created_commit: Whether the push made a commit. ``False`` when every file was already
            on the branch (a new branch is then created at the head of ``main``, which holds them).
    """

    repo_id: str
    branch: str
    commit_url: str
    commit_sha: str
    pr_url: str | None = None
    created_commit: bool = True


@dataclass(frozen=True)
class PushPlan:
    """What a push would do (``--dry-run``): target, files and their total size."""

    folder: Path
    repo_id: str
    branch: str
    create_pr: bool
    private: bool
    files: tuple[tuple[str, int], ...]

    def describe(self) -> str:
        """Human-readable plan, one line per file."""
        total = sum(size for _, size in self.files)
        lines = [
            f"would push {len(self.files)} file(s), {total / 1e6:.2f} MB, from {self.folder} to {self.repo_id}"
            f" (branch {self.branch}{', as a pull request' if self.create_pr else ''}"
            f"{', private if created' if self.private else ''}):"
        ]
        lines += [f"  {name}  ({size} bytes)" for name, size in self.files]
        return "\n".join(lines)


def retry_command(
    folder: str | Path,
    repo_id: str,
    branch: str | None = None,
    create_pr: bool = False,
    private: bool = False,
) -> str:
    """The ``hf-recycle push`` command line that retries a push of ``folder``."""
    parts = ["hf-recycle", "push", "--repo", repo_id, "--from", str(folder)]
    if branch and branch != "main":
        parts += ["--branch", branch]
    if create_pr:
        parts.append("--create-pr")
    if private:
        parts.append("--private")
    return shlex.join(parts)


def repo_visibility(
    repo_id: str, *, endpoint: str | None = None, token: str | bool | None = None
) -> str | None:
    """``"private"`` or ``"public"`` for an existing model repo, ``None`` when it does not exist (or cannot be seen).

    Raises:
        HubAuthError: The token was refused.
        HubUnavailableError: The Hub cannot be reached.
    """
    from huggingface_hub import HfApi

    from hf_recycle.hub.client import default_endpoint, hub_errors

    endpoint = (endpoint or default_endpoint()).rstrip("/")
    with hub_errors(repo_id, repo_id, None, endpoint, token):
        return _visibility(HfApi(endpoint=endpoint, token=token), repo_id)


def _visibility(api, repo_id: str) -> str | None:
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        return "private" if api.repo_info(repo_id).private else "public"
    except RepositoryNotFoundError:  # missing, or private and not readable with this token
        return None


def _check(folder: str | Path, repo_id: str) -> Path:
    folder = Path(folder)
    if not _REPO_ID_RE.match(repo_id or ""):
        raise HubPushError(f"'{repo_id}' is not a repo id: write it as org/name, e.g. --repo my-org/my-merge")
    if not folder.is_dir():
        raise HubPushError(
            f"folder '{folder}' does not exist: pass --from with the folder that `hf-recycle run` wrote "
            "(the model folder under output.dir, e.g. outputs/demo/model)"
        )
    return folder


def _files(folder: Path) -> list[tuple[str, int]]:
    from fnmatch import fnmatch

    out = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(folder).as_posix()
        if any(fnmatch(rel, p) or fnmatch(path.name, p) for p in IGNORE_PATTERNS):
            continue
        if any(part.startswith(".") for part in Path(rel).parts):
            continue
        out.append((rel, path.stat().st_size))
    return out


def plan_push(
    folder: str | Path,
    repo_id: str,
    *,
    branch: str | None = None,
    create_pr: bool = False,
    private: bool = False,
) -> PushPlan:
    """What :func:`push_folder` would upload; contacts nothing.

    Raises:
        HubPushError: The repo id is malformed, or the folder is missing or empty.
    """
    folder = _check(folder, repo_id)
    files = _files(folder)
    if not files:
        raise HubPushError(f"folder '{folder}' holds no file to push")
    return PushPlan(folder, repo_id, branch or "main", create_pr, private, tuple(files))


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    branch: str | None = None,
    create_pr: bool = False,
    private: bool = False,
    message: str | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
) -> PushResult:
    """Upload ``folder`` to ``repo_id`` in one commit, creating the repo and the branch when missing.

    Args:
        folder: The folder to upload (study databases and hidden files are left out).
        repo_id: ``org/name``.
        branch: Branch to commit to (created from ``main`` when missing); default ``main``.
        create_pr: Open a pull request against ``branch`` instead of committing to it.
        private: Create the repo private. An existing repo keeps its visibility: a private push
            into an existing public repo is refused (it would publish the files).
        message: Commit title; default ``Upload <folder name> with hf-recycle``.
        endpoint: Hub endpoint; default huggingface_hub's (``HF_ENDPOINT``).
        token: Hub token; default huggingface_hub's (``HF_TOKEN``, stored login). Never printed.

    Returns:
        A :class:`PushResult` with the URL of the commit at the branch's head: the new commit,
        or, when every file was already there (no commit is made), the commit that holds them.

    Raises:
        HubPushError: The push failed (no token, refused token, unreachable Hub, bad repo
            id, a private push into a public repo...). The local folder is left as it was; the
            message gives the retry command.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HFValidationError

    from hf_recycle.hub.client import default_endpoint, hub_errors

    plan = plan_push(folder, repo_id, branch=branch, create_pr=create_pr, private=private)
    endpoint = (endpoint or default_endpoint()).rstrip("/")
    branch = plan.branch
    api = HfApi(endpoint=endpoint, token=token)
    step = "creating the repo"
    head: str | None = None
    try:
        with hub_errors(repo_id, repo_id, branch, endpoint, token):
            step = "reading the repo's visibility"
            visibility = _visibility(api, repo_id)
            if private and visibility == "public":
                raise _PublicRepo(
                    f"'{repo_id}' is public and this push is private: pushing would publish the files. Push to a "
                    f"new or private repo, or make '{repo_id}' private on the Hub first; to publish on purpose, "
                    "push with private=False (recipe: push.private: false; RecycleCallback(private=False); "
                    "hf-recycle push without --private)"
                )
            step = "creating the repo"
            if visibility is None:
                api.create_repo(repo_id, private=private, exist_ok=True)
            if branch != "main":
                step = f"creating the branch '{branch}'"
                api.create_branch(repo_id, branch=branch, exist_ok=True)
            step = "reading the branch head"
            before = None if create_pr else _branch_head(api, repo_id, branch)
            step = "uploading"
            logger.info(
                "pushing %d file(s) (%.1f MB) from %s to %s@%s",
                len(plan.files), sum(s for _, s in plan.files) / 1e6, plan.folder, repo_id, branch,
            )  # fmt: skip
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=str(plan.folder),
                commit_message=message or f"Upload {plan.folder.resolve().name} with hf-recycle",
                revision=branch,
                create_pr=create_pr or None,
                ignore_patterns=IGNORE_PATTERNS,
            )
            created = True
            if not create_pr:
                # Whether a commit was made is read from the Hub's refs, not from what the client
                # reports: when no file changed it makes no commit, and the branch (new ones are
                # created at main's head) already holds the files at its head.
                step = "reading the branch head"
                head = _branch_head(api, repo_id, branch)
                if head is None:
                    raise HubPushError(f"branch '{branch}' of '{repo_id}' does not exist after the push")
                created = head != before
    except _PublicRepo as exc:
        raise HubPushError(f"not pushing '{plan.folder}': {exc}") from None
    except (HfRecycleError, HFValidationError, OSError, ValueError) as exc:
        detail = _server_message(exc)
        raise HubPushError(
            f"pushing '{plan.folder}' to '{repo_id}' (branch {branch}) on {endpoint} failed while {step}: "
            f"{exc}{detail}. The local folder is intact; retry with: "
            f"{retry_command(plan.folder, repo_id, branch, create_pr, private)}"
        ) from exc
    result = PushResult(
        repo_id=repo_id,
        branch=branch,
        commit_url=str(info.commit_url) if created else f"{endpoint}/{repo_id}/commit/{head}",
        commit_sha=str(info.oid) if created else str(head),
        pr_url=str(info.pr_url) if created and info.pr_url else None,
        created_commit=created,
    )
    if created:
        logger.info("pushed %s", result.pr_url or result.commit_url)
    else:
        logger.info(
            "no file changed: made no commit; branch '%s' of %s is at commit %s, which holds these files",
            branch, repo_id, head,
        )  # fmt: skip
    return result


class _PublicRepo(Exception):
    """A private push into an existing public repo (refused before any upload)."""


def _branch_head(api, repo_id: str, branch: str) -> str | None:
    """The commit sha ``branch`` of ``repo_id`` points at, or ``None`` when there is no such branch."""
    refs = api.list_repo_refs(repo_id)
    return next((ref.target_commit for ref in refs.branches if ref.name == branch), None)


def _server_message(exc: BaseException) -> str:
    """The Hub's own error text (``X-Error-Message``) of a wrapped HTTP error, if any."""
    cause = exc.__cause__ or exc
    server = getattr(cause, "server_message", None)
    return f" (the Hub said: {server.strip()})" if server and server.strip() else ""
