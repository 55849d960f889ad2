"""On-disk storage of the local Hub: content-addressed blobs and commits, branches and tags.

Layout under ``root`` (survives restarts)::

    objects/blobs/ab/cdef...          file contents, named by their git blob sha1
    objects/commits/ab/cdef....json   {"parents", "tree": {path: [oid, size]}, "title", ...},
                                      named by the sha1 of that JSON
    repos/<type>s/<org>/<name>/repo.json   {"private": bool, "created_at": ...}
    repos/<type>s/<org>/<name>/refs.json   {"heads": {branch: sha}, "tags": {tag: sha}}
    repos/<type>s/<org>/<name>/commits.log every commit sha made in the repo, one per line

Every path is built from validated parts (object ids are 40 hex digits, repo names match
:data:`REPO_NAME`) and checked, symlinks resolved, to lie under ``root``: nothing that a
request names can reach a file outside it. Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

REPO_TYPES = ("model", "dataset", "space")
_SHA = re.compile(r"^[0-9a-f]{7,40}$")
_OID = re.compile(r"^[0-9a-f]{40}$")
REPO_NAME = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}$", re.ASCII)


class HubStoreError(Exception):
    """An API error with its HTTP status and Hub error code (``X-Error-Code``)."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def git_blob_sha(data: bytes) -> str:
    """The git sha1 of a blob: what the Hub reports as a regular file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


@dataclass(frozen=True)
class Commit:
    """A stored commit: its sha, parents, flat tree ``{path: (oid, size)}`` and message."""

    id: str
    parents: tuple[str, ...]
    tree: dict[str, tuple[str, int]]
    title: str
    message: str
    author: str
    date: str


@dataclass(frozen=True)
class RepoRef:
    """A repo address: type (model, dataset, space) and ``org/name``."""

    repo_type: str
    repo_id: str


class HubStore:
    """Thread-safe repo storage; every write goes through one lock and lands atomically on disk."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._real_root = self.root.resolve()
        self._lock = threading.RLock()

    # --- paths -------------------------------------------------------------------------

    def _under_root(self, path: Path, code: str) -> Path:
        """``path`` if it resolves (symlinks followed) to a place under the root, else a 404."""
        if not path.resolve().is_relative_to(self._real_root):
            raise HubStoreError(404, "Not found (outside the storage root)", code)
        return path

    def _repo_dir(self, repo: RepoRef) -> Path:
        org, _, name = repo.repo_id.partition("/")
        if repo.repo_type not in REPO_TYPES or not (REPO_NAME.fullmatch(org) and REPO_NAME.fullmatch(name)):
            raise HubStoreError(404, f"Repository {repo.repo_id} not found", "RepoNotFound")
        return self._under_root(self.root / "repos" / f"{repo.repo_type}s" / org / name, "RepoNotFound")

    def _repo_file(self, repo: RepoRef, name: str) -> Path:
        return self._under_root(self._repo_dir(repo) / name, "RepoNotFound")

    def _object_path(self, kind: str, oid: str, suffix: str = "") -> Path:
        if not _OID.fullmatch(oid):
            raise HubStoreError(400, f"Invalid object id: {oid!r} (40 hex digits)", "BadRequest")
        return self._under_root(
            self.root / "objects" / kind / oid[:2] / f"{oid[2:]}{suffix}", "EntryNotFound"
        )

    def _blob_path(self, oid: str) -> Path:
        return self._object_path("blobs", oid)

    def _commit_path(self, sha: str) -> Path:
        return self._object_path("commits", sha, ".json")

    # --- repos -------------------------------------------------------------------------

    def repo_meta(self, repo: RepoRef) -> dict | None:
        path = self._repo_file(repo, "repo.json")
        return json.loads(path.read_text()) if path.is_file() else None

    def require_repo(self, repo: RepoRef) -> dict:
        meta = self.repo_meta(repo)
        if meta is None:
            raise HubStoreError(404, f"Repository {repo.repo_id} not found", "RepoNotFound")
        return meta

    def create_repo(self, repo: RepoRef, private: bool = False) -> None:
        org, _, name = repo.repo_id.partition("/")
        if not (REPO_NAME.fullmatch(org) and REPO_NAME.fullmatch(name)) or repo.repo_type not in REPO_TYPES:
            raise HubStoreError(400, f"Invalid repo name '{repo.repo_id}'", "BadRequest")
        with self._lock:
            if self.repo_meta(repo) is not None:
                raise HubStoreError(409, "You already created this model repo", "RepoExists")
            folder = self._repo_dir(repo)
            folder.mkdir(parents=True, exist_ok=True)
            _write_atomic(folder / "refs.json", json.dumps({"heads": {}, "tags": {}}).encode())
            _write_atomic(
                folder / "repo.json", json.dumps({"private": private, "created_at": _now()}).encode()
            )
            # Like the Hub: a first commit holding .gitattributes.
            sha = self._new_commit(
                repo,
                (),
                {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
                {},
                "initial commit",
                "",
            )
            self._set_refs(repo, heads={"main": sha})

    def set_private(self, repo: RepoRef, private: bool) -> None:
        with self._lock:
            meta = self.require_repo(repo)
            meta["private"] = private
            _write_atomic(self._repo_file(repo, "repo.json"), json.dumps(meta).encode())

    def delete_repo(self, repo: RepoRef) -> None:
        import shutil

        with self._lock:
            self.require_repo(repo)
            shutil.rmtree(self._repo_dir(repo))  # objects stay: they are shared and content-addressed

    # --- refs and commits --------------------------------------------------------------

    def refs(self, repo: RepoRef) -> dict[str, dict[str, str]]:
        self.require_repo(repo)
        return json.loads(self._repo_file(repo, "refs.json").read_text())

    def _set_refs(
        self,
        repo: RepoRef,
        heads: dict | None = None,
        tags: dict | None = None,
        drop_head: str | None = None,
        drop_tag: str | None = None,
    ) -> None:
        refs = self.refs(repo)
        refs["heads"].update(heads or {})
        refs["tags"].update(tags or {})
        refs["heads"].pop(drop_head, None)
        refs["tags"].pop(drop_tag, None)
        _write_atomic(self._repo_file(repo, "refs.json"), json.dumps(refs, indent=1).encode())

    def repo_commits(self, repo: RepoRef) -> list[str]:
        path = self._repo_file(repo, "commits.log")
        return path.read_text().split() if path.is_file() else []

    def resolve(self, repo: RepoRef, revision: str) -> str:
        """A branch, tag or (possibly abbreviated) sha of ``repo`` to its commit sha."""
        refs = self.refs(repo)
        for name in (revision, revision.removeprefix("refs/heads/")):
            if name in refs["heads"]:
                return refs["heads"][name]
        for name in (revision, revision.removeprefix("refs/tags/")):
            if name in refs["tags"]:
                return refs["tags"][name]
        if _SHA.match(revision):
            matches = [c for c in self.repo_commits(repo) if c.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        raise HubStoreError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def commit(self, sha: str) -> Commit:
        data = json.loads(self._commit_path(sha).read_text())
        return Commit(
            id=sha,
            parents=tuple(data["parents"]),
            tree={p: (v[0], v[1]) for p, v in data["tree"].items()},
            title=data["title"],
            message=data["message"],
            author=data["author"],
            date=data["date"],
        )

    def log(self, repo: RepoRef, revision: str) -> list[Commit]:
        """Commits reachable from ``revision`` along first parents, newest first."""
        sha: str | None = self.resolve(repo, revision)
        out = []
        while sha:
            commit = self.commit(sha)
            out.append(commit)
            sha = commit.parents[0] if commit.parents else None
        return out

    def _new_commit(
        self,
        repo: RepoRef,
        parents: tuple[str, ...],
        additions: dict[str, bytes],
        base_tree: dict[str, tuple[str, int]],
        title: str,
        message: str,
        deletions: Iterable[str] = (),
        deleted_folders: Iterable[str] = (),
    ) -> str:
        tree = dict(base_tree)
        for path in deletions:
            if path not in tree:
                raise HubStoreError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            del tree[path]
        for folder in deleted_folders:
            prefix = folder.rstrip("/") + "/"
            doomed = [p for p in tree if p.startswith(prefix)]
            if not doomed:
                raise HubStoreError(404, f"A folder with this name doesn't exist: {folder}", "EntryNotFound")
            for p in doomed:
                del tree[p]
        for path, data in additions.items():
            oid = git_blob_sha(data)
            blob = self._blob_path(oid)
            if not blob.exists():
                _write_atomic(blob, data)
            tree[path] = (oid, len(data))
        body = {
            "parents": list(parents),
            "tree": {p: list(v) for p, v in sorted(tree.items())},
            "title": title,
            "message": message,
            "author": "user",
            "date": _now(),
        }
        raw = json.dumps(body, sort_keys=True).encode()
        sha = hashlib.sha1(b"commit %d\0" % len(raw) + raw).hexdigest()
        _write_atomic(self._commit_path(sha), raw)
        with open(self._repo_file(repo, "commits.log"), "a") as log:
            log.write(sha + "\n")
        return sha

    def create_commit(
        self,
        repo: RepoRef,
        branch: str,
        additions: dict[str, bytes],
        deletions: Iterable[str],
        deleted_folders: Iterable[str],
        title: str,
        message: str,
        parent_commit: str | None = None,
    ) -> str:
        """Commit on top of ``branch`` and move the branch; returns the new sha."""
        with self._lock:
            refs = self.refs(repo)
            if branch not in refs["heads"]:
                raise HubStoreError(
                    404, f"Invalid rev id: {branch} (commits go to an existing branch)", "RevisionNotFound"
                )
            head = refs["heads"][branch]
            if parent_commit is not None and parent_commit != head:
                raise HubStoreError(
                    412,
                    f"A commit has happened since: {parent_commit} is not the head of {branch}",
                    "PreconditionFailed",
                )
            sha = self._new_commit(
                repo, (head,), additions, self.commit(head).tree, title, message, deletions, deleted_folders
            )
            self._set_refs(repo, heads={branch: sha})
            return sha

    def create_branch(self, repo: RepoRef, branch: str, starting_point: str | None) -> str:
        with self._lock:
            refs = self.refs(repo)
            if branch in refs["heads"]:
                raise HubStoreError(409, f"Reference already exists: refs/heads/{branch}", "Conflict")
            sha = self.resolve(repo, starting_point or "main")
            self._set_refs(repo, heads={branch: sha})
            return sha

    def delete_branch(self, repo: RepoRef, branch: str) -> None:
        with self._lock:
            if branch not in self.refs(repo)["heads"]:
                raise HubStoreError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            self._set_refs(repo, drop_head=branch)

    def create_tag(self, repo: RepoRef, tag: str, revision: str) -> str:
        with self._lock:
            if tag in self.refs(repo)["tags"]:
                raise HubStoreError(409, f"Tag already exists: {tag}", "Conflict")
            sha = self.resolve(repo, revision)
            self._set_refs(repo, tags={tag: sha})
            return sha

    def delete_tag(self, repo: RepoRef, tag: str) -> None:
        with self._lock:
            if tag not in self.refs(repo)["tags"]:
                raise HubStoreError(404, f"Invalid rev id: {tag}", "RevisionNotFound")
            self._set_refs(repo, drop_tag=tag)

    def blob_path(self, oid: str) -> Path:
        path = self._blob_path(oid)
        if not path.is_file():
            raise HubStoreError(404, f"Entry not found: blob {oid}", "EntryNotFound")
        return path
