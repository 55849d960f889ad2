"""A thin read-only Hub client for resolution: one endpoint, one token, typed errors, tree caching."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from hf_recycle.errors import (
    CheckpointNotFoundError,
    HfRecycleError,
    HubAuthError,
    HubRepoNotFoundError,
    HubRevisionNotFoundError,
    HubUnavailableError,
)

logger = logging.getLogger(__name__)

_LOGIN_HINT = "run `hf auth login` or set HF_TOKEN (or pass token=...)"


def default_endpoint() -> str:
    """huggingface_hub's endpoint (``HF_ENDPOINT`` as read when huggingface_hub was imported)."""
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def token_available(token: str | bool | None) -> bool:
    """Whether a token will be sent: the one given, else HF_TOKEN or the stored login."""
    if isinstance(token, str):
        return bool(token)
    if token is False:
        return False
    from huggingface_hub import get_token

    return get_token() is not None


@dataclass(frozen=True)
class RepoEntry:
    """One file of a repo tree at a commit."""

    path: str
    oid: str
    size: int


@contextlib.contextmanager
def hub_errors(
    spec: str, repo_id: str, revision: str | None, endpoint: str, token: str | bool | None
) -> Iterator[None]:
    """Translate huggingface_hub and transport errors into hf-recycle errors naming ``spec``."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"'{repo_id}' on {endpoint} (spec '{spec}')"
    try:
        yield
    except HfRecycleError:
        raise
    except GatedRepoError as exc:
        raise HubAuthError(
            f"repo {where} is gated: accept its conditions on the Hub, then {_LOGIN_HINT}"
        ) from exc
    except RevisionNotFoundError as exc:
        raise HubRevisionNotFoundError(
            f"revision '{revision}' does not exist in {where}: "
            f"list its branches and tags with `hf-recycle resolve '{repo_id}@*'`"
        ) from exc
    except RepositoryNotFoundError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 401 and not token_available(token):
            raise HubAuthError(
                f"cannot access repo {where}: it is private (or does not exist) and no token was found; {_LOGIN_HINT}"
            ) from exc
        if status == 401:
            raise HubAuthError(
                f"the token was refused for repo {where}: check that it is valid and can read the repo"
            ) from exc
        hint = "check the repo id (a local folder must exist or start with ./, ../, / or ~)"
        if not token_available(token):
            hint += f"; if the repo is private, {_LOGIN_HINT}"
        raise HubRepoNotFoundError(f"repo {where} does not exist or is not visible: {hint}") from exc
    except RemoteEntryNotFoundError as exc:
        raise CheckpointNotFoundError(
            f"'{spec}': the path does not exist in '{repo_id}' at revision '{revision}': check the subfolder name"
        ) from exc
    except OfflineModeIsEnabled as exc:
        raise HubUnavailableError(
            f"HF_HUB_OFFLINE is set but resolving '{spec}' needs the Hub: unset it, or warm the cache first"
        ) from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            why = "" if token_available(token) else " and no token was found"
            raise HubAuthError(
                f"the Hub refused access to {where} (HTTP {status}){why}: {_LOGIN_HINT}"
            ) from exc
        raise HubUnavailableError(f"the Hub failed on {where} (HTTP {status}): retry later") from exc
    except httpx2.TransportError as exc:
        raise HubUnavailableError(
            f"cannot reach the Hub at {endpoint} while resolving '{spec}' ({type(exc).__name__}): check the endpoint"
            " (--endpoint / HF_ENDPOINT) and the network, or set HF_HUB_OFFLINE=1 to use the local cache"
        ) from exc


_SHA = re.compile(r"[0-9a-f]{40}")


class HubClient:
    """Read calls that resolution needs, against one endpoint, with the tree of each commit cached.

    A commit's tree never changes, so it is listed once per process: resolving, the search's
    download and the final merge's all read the same listing (keyed by endpoint, the token's
    fingerprint, repo and commit; at most :data:`TREE_CACHE_SIZE` commits are kept).
    """

    #: Commit trees kept for the process (oldest dropped first).
    TREE_CACHE_SIZE = 4096
    _trees: ClassVar[OrderedDict[tuple[str, str, str, str], list[RepoEntry]]] = OrderedDict()
    _trees_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, endpoint: str | None = None, token: str | bool | None = None) -> None:
        from huggingface_hub import HfApi

        self.endpoint = (endpoint or default_endpoint()).rstrip("/")
        self.token = token
        self.api = HfApi(endpoint=self.endpoint, token=token)
        # who is asking, without keeping the token: another token may not see the same repos
        who = token if not isinstance(token, str) else hashlib.sha256(token.encode()).hexdigest()
        self._who = repr(who)

    def errors(self, spec: str, repo_id: str, revision: str | None):
        """Context manager translating errors for one spec."""
        return hub_errors(spec, repo_id, revision, self.endpoint, self.token)

    def commit_of(self, repo_id: str, revision: str) -> str:
        """The commit sha a branch, tag or sha points to (``model_info`` at that revision)."""
        info = self.api.model_info(repo_id, revision=revision)
        if not info.sha:
            raise HubRevisionNotFoundError(f"the Hub returned no commit sha for '{repo_id}@{revision}'")
        return info.sha

    def refs(self, repo_id: str) -> list[tuple[str, str, str]]:
        """Every branch and tag as ``(name, kind, commit)`` with kind ``branch`` or ``tag``."""
        refs = self.api.list_repo_refs(repo_id)
        out = [(b.name, "branch", b.target_commit) for b in refs.branches]
        out += [(t.name, "tag", t.target_commit) for t in refs.tags]
        return out

    def commits(self, repo_id: str, revision: str) -> list:
        """Commits reachable from ``revision``, newest first (``GitCommitInfo`` objects)."""
        return self.api.list_repo_commits(repo_id, revision=revision)

    def tree(self, repo_id: str, commit: str) -> list[RepoEntry]:
        """Every file of the repo at ``commit`` (recursive), cached per commit."""
        from huggingface_hub.hf_api import RepoFile

        key = (self.endpoint, self._who, repo_id, commit)
        with self._trees_lock:
            cached = self._trees.get(key)
        if cached is not None:
            return list(cached)
        entries = [
            RepoEntry(path=e.path, oid=e.blob_id, size=e.size)
            for e in self.api.list_repo_tree(repo_id, revision=commit, recursive=True)
            if isinstance(e, RepoFile)
        ]
        if not _SHA.fullmatch(commit):  # a branch moves: only a commit's tree is kept
            return entries
        with self._trees_lock:
            self._trees[key] = entries
            while len(self._trees) > self.TREE_CACHE_SIZE:
                self._trees.popitem(last=False)
        return list(entries)
