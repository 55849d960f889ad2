"""A local Hub-compatible HTTP server, for tests, CI, offline demos and air-gapped teams.

It speaks the part of the Hub HTTP API that huggingface_hub's client uses to create
repos, commit files (``preupload`` answers ``regular`` for every file, so commits carry
base64 content in the NDJSON ``commit`` call: no LFS, no Xet), create branches and
tags, list refs, commits and trees, read repo info at a revision, validate model cards
(``/api/validate-yaml``, with huggingface_hub's own card parsing) and download files
through ``/resolve/`` URLs (HEAD and GET, with ``X-Repo-Commit``, ``ETag`` and
``Content-Length``; safetensors files answer with a same-host redirect, like LFS files
on the Hub). Storage is :class:`~hf_recycle.testing.hub_store.HubStore` on disk.

What it guarantees:

- Every write (create or delete a repo, settings, preupload, commit, branches, tags)
  and every read of a private repo needs the server's token, sent the Hub's way
  (``Authorization: Bearer <token>``) and compared with :func:`hmac.compare_digest`. A wrong
  token is refused (401) on every route, as on the Hub. A token is never read from a query
  string, and never logged: request lines are logged without their query, headers never.
- It binds loopback addresses only (127.0.0.0/8, ::1, ``localhost``) unless ``allow_remote``
  is given; it then warns, since it speaks plain HTTP.
- Nothing a request names reaches a file outside ``root`` (see the store); a blob is served
  only through a repo, commit and access check, like ``/resolve/``.

Run it with ``hf-recycle hub serve --root DIR``, then point any client at it with
``HF_ENDPOINT=http://127.0.0.1:P`` and ``HF_TOKEN=<its token>``. Standard library only, but
for the card validation (huggingface_hub and PyYAML, imported when a card comes).
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import logging
import re
import secrets
import socket
import sys
import threading
from collections.abc import Iterator
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from hf_recycle.errors import LocalHubConfigError
from hf_recycle.testing.hub_store import REPO_TYPES, HubStore, HubStoreError, RepoRef

logger = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "user"
_TYPE_SEGMENTS = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_REDIRECTED = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf")
_CHUNK = 1024 * 1024
_MAX_JSON_BODY = 32 * 1024 * 1024  # JSON calls (validate-yaml, paths-info, preupload); commits are NDJSON
_TOKEN = re.compile(r"[\x21-\x7e]+")  # what an HTTP header carries as is: visible ASCII
_QUERY = re.compile(r"\?\S*")
# The Hub's answer to a wrong token; huggingface_hub tells it apart from a missing repo by this text.
_BAD_TOKEN = "Invalid credentials in Authorization header"


class HubRequestHandler(BaseHTTPRequestHandler):
    """Routes one request to the store; see the module docstring for the endpoints."""

    protocol_version = "HTTP/1.1"
    server_version = "hf-recycle-local-hub"
    server: LocalHubServer

    # --- plumbing ----------------------------------------------------------------------

    @property
    def store(self) -> HubStore:
        return self.server.store

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (stdlib signature)
        # Request lines lose their query string; no header (so no token) is ever logged.
        logger.debug("%s %s", self.address_string(), _QUERY.sub("?...", format % args))

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = self.path.split("?", 1)[0]
        with self.server.requests_lock:  # "METHOD /path" of each answered request, for tests
            self.server.requests.append(f"{self.command} {path}")
        super().log_request(code, size)

    def _base_url(self) -> str:
        host = self.headers.get("Host") or self.server.url.removeprefix("http://")
        return f"http://{host}"

    def _authenticated(self) -> bool:
        """Whether the request carries the server's token; a wrong one is refused (401), as on the Hub."""
        auth = self.headers.get("Authorization")
        if auth is None:
            return False
        scheme, _, presented = auth.strip().partition(" ")
        expected = self.server.token.encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.strip().encode("latin-1", "replace"), expected
        ):
            raise HubStoreError(401, _BAD_TOKEN)
        return True

    def _require_token(self, code: str | None = None) -> None:
        if not self._auth:
            raise HubStoreError(
                401,
                "A token is required: send the local Hub's token (HF_TOKEN; Authorization: Bearer <token>)",
                code,
            )

    def _body(self, limit: int | None = None) -> bytes:
        """The request body, read once (chunked or Content-Length) and kept for this request."""
        if self._request_body is None:
            if limit is not None and self._content_length() > limit:
                raise HubStoreError(413, f"Request body over {limit} bytes", "PayloadTooLarge")
            data = bytearray()
            for chunk in self._chunks:
                data += chunk
                if limit is not None and len(data) > limit:
                    raise HubStoreError(413, f"Request body over {limit} bytes", "PayloadTooLarge")
            self._request_body = bytes(data)
        return self._request_body

    def _body_chunks(self) -> Iterator[bytes]:
        """The raw body in pieces of at most ``_CHUNK`` bytes (chunked or Content-Length)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while size := int(self.rfile.readline(256).split(b";")[0].strip() or b"0", 16):
                yield from self._read_exactly(size)
                self.rfile.readline(256)
            while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                pass
            return
        yield from self._read_exactly(self._content_length())

    def _content_length(self) -> int:
        try:
            return int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise HubStoreError(400, "Invalid Content-Length", "BadRequest") from None

    def _read_exactly(self, size: int) -> Iterator[bytes]:
        while size > 0:
            chunk = self.rfile.read(min(size, _CHUNK))
            if not chunk:
                raise HubStoreError(400, "Request body ended early", "BadRequest")
            size -= len(chunk)
            yield chunk

    def _json_body(self) -> dict:
        raw = self._body(limit=_MAX_JSON_BODY)
        try:
            body = json.loads(raw) if raw else {}
        except ValueError as exc:
            raise HubStoreError(400, f"Invalid JSON body: {exc}", "BadRequest") from exc
        if not isinstance(body, dict):
            raise HubStoreError(400, "Invalid JSON body: expected an object", "BadRequest")
        return body

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def _send_json(self, data, status: int = 200) -> None:
        self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json; charset=utf-8"})

    def _send_error(self, exc: HubStoreError, head: bool = False) -> None:
        message = exc.message.encode("ascii", "backslashreplace").decode()  # a header is latin-1 at most
        headers = {"Content-Type": "application/json; charset=utf-8", "X-Error-Message": message}
        if self.close_connection:
            headers["Connection"] = "close"
        if exc.code:
            headers["X-Error-Code"] = exc.code
        if getattr(exc, "commit", None):
            headers["X-Repo-Commit"] = exc.commit
        self._send(exc.status, json.dumps({"error": exc.message}).encode(), headers, head=head)

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        segments = [unquote(s) for s in url.path.strip("/").split("/")] if url.path.strip("/") else []
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self._request_body: bytes | None = None
        self._chunks = self._body_chunks()
        try:
            self._auth = self._authenticated()
            self._route(method, segments, query)
        except HubStoreError as exc:
            if exc.status == 413:  # not worth reading: answer, then close
                self.close_connection = True
            else:
                self._discard_body()
            self._send_error(exc, head=method == "HEAD")
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # a bug: answer 500 rather than hang the client
            logger.exception("local hub: %s %s failed", method, url.path)
            self._discard_body()
            self._send_error(HubStoreError(500, f"Internal error: {exc}"), head=method == "HEAD")

    def _discard_body(self) -> None:
        """Read what is left of the body without keeping it, so that the client reads the answer."""
        try:
            for _ in self._chunks:
                pass
        except Exception:  # noqa: BLE001 (a broken body: the connection cannot be reused)
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    # --- routing -----------------------------------------------------------------------

    def _route(self, method: str, seg: list[str], query: dict) -> None:
        if seg[:2] == ["api", "whoami-v2"]:
            self._require_token()
            return self._send_json(
                {
                    "type": "user",
                    "name": DEFAULT_NAMESPACE,
                    "fullname": "Local Hub user",
                    "orgs": [],
                    "auth": {"accessToken": {"role": "write"}},
                }
            )
        if seg[:2] == ["api", "validate-yaml"] and method == "POST":
            return self._validate_yaml()
        if seg[:2] == ["api", "repos"] and len(seg) == 3:
            return self._repos_call(method, seg[2])
        if len(seg) >= 3 and seg[0] == "api" and seg[1] in _TYPE_SEGMENTS:
            repo_type = _TYPE_SEGMENTS[seg[1]]
            repo_id, rest = _split_repo(seg[2:])
            return self._repo_api(method, RepoRef(repo_type, repo_id), rest, query)
        if seg[:1] == ["_blobs"] and len(seg) == 2 and method in ("GET", "HEAD"):
            return self._serve_blob(seg[1], query, method == "HEAD")
        # File downloads: /{org}/{name}/resolve/{rev}/{path}, with datasets/ or spaces/ in front.
        repo_type = "model"
        if seg and seg[0] in ("datasets", "spaces"):
            repo_type, seg = _TYPE_SEGMENTS[seg[0]], seg[1:]
        if "resolve" in seg[1:3] and method in ("GET", "HEAD"):
            i = seg.index("resolve", 1)
            if len(seg) >= i + 3:
                return self._resolve_file(
                    RepoRef(repo_type, "/".join(seg[:i])),
                    seg[i + 1],
                    "/".join(seg[i + 2 :]),
                    method == "HEAD",
                )
        raise HubStoreError(404, f"Not found: {method} {self.path}")

    def _check_access(self, repo: RepoRef) -> dict:
        meta = self.store.require_repo(repo)
        if meta.get("private") and not self._auth:
            raise HubStoreError(401, "Repository not found", "RepoNotFound")
        return meta

    def _repos_call(self, method: str, action: str) -> None:
        self._require_token()
        body = self._json_body()
        name, org = body.get("name"), body.get("organization")
        repo_type = body.get("type") or "model"
        if not isinstance(name, str) or not name:
            raise HubStoreError(400, "Missing repo name", "BadRequest")
        if repo_type not in REPO_TYPES:
            raise HubStoreError(
                400, f"Invalid repo type '{repo_type}': one of {', '.join(REPO_TYPES)}", "BadRequest"
            )
        repo = RepoRef(repo_type, f"{org or DEFAULT_NAMESPACE}/{name}")
        if action == "create" and method == "POST":
            private = body.get("visibility") == "private" or bool(body.get("private"))
            url = f"{self._base_url()}/{_URL_PREFIX[repo_type]}{repo.repo_id}"
            try:
                self.store.create_repo(repo, private=private)
            except HubStoreError as exc:
                if exc.status != 409:
                    raise
                # Like the Hub: the conflict answer carries the url (create_repo(exist_ok=True) reads it).
                return self._send(
                    409,
                    json.dumps({"error": exc.message, "url": url}).encode(),
                    {"Content-Type": "application/json; charset=utf-8", "X-Error-Message": exc.message},
                )
            return self._send_json({"url": url, "name": repo.repo_id, "id": repo.repo_id})
        if action == "delete" and method == "DELETE":
            self.store.delete_repo(repo)
            return self._send(200)
        raise HubStoreError(404, f"Not found: {method} /api/repos/{action}")

    def _repo_api(self, method: str, repo: RepoRef, rest: list[str], query: dict) -> None:
        action = rest[0] if rest else ""
        if method not in ("GET", "HEAD") and not (method == "POST" and action == "paths-info"):
            # On the Hub, a 401 on a repo URL reads as "repo not found" to huggingface_hub.
            self._require_token("RepoNotFound")
        if method == "PUT" and rest == ["settings"]:
            body = self._json_body()
            self.store.require_repo(repo)
            if "private" in body or "visibility" in body:
                self.store.set_private(repo, body.get("visibility") == "private" or bool(body.get("private")))
            return self._send_json({})
        body = self._json_body() if method in ("POST", "DELETE") and rest[:1] != ["commit"] else {}
        meta = self._check_access(repo)
        if method == "GET" and not rest:
            return self._send_json(self._repo_info(repo, meta, "main"))
        if method == "GET" and action == "revision" and len(rest) >= 2:
            return self._send_json(self._repo_info(repo, meta, "/".join(rest[1:])))
        if method == "GET" and rest == ["refs"]:
            return self._send_json(self._refs(repo))
        if method == "GET" and action == "commits" and len(rest) >= 2:
            return self._send_json(self._commits(repo, "/".join(rest[1:])))
        if method == "GET" and action == "tree" and len(rest) >= 2:
            path = "/".join(rest[2:]).strip("/")
            return self._send_json(
                self._tree(repo, rest[1], path, query.get("recursive") in ("True", "true", "1"))
            )
        if method == "POST" and action == "paths-info" and len(rest) >= 2:
            return self._send_json(self._paths_info(repo, rest[1], body.get("paths") or []))
        if method == "POST" and action == "preupload" and len(rest) >= 2:
            return self._send_json(self._preupload(repo, rest[1], body))
        if method == "POST" and action == "commit" and len(rest) >= 2:
            return self._send_json(self._commit(repo, "/".join(rest[1:]), query))
        if action == "branch" and len(rest) >= 2:
            branch = "/".join(rest[1:])
            if method == "POST":
                self.store.create_branch(repo, branch, body.get("startingPoint"))
                return self._send_json({})
            if method == "DELETE":
                self.store.delete_branch(repo, branch)
                return self._send_json({})
        if action == "tag" and len(rest) >= 2:
            if method == "POST":
                if not body.get("tag"):
                    raise HubStoreError(400, "Missing tag name", "BadRequest")
                self.store.create_tag(repo, body["tag"], "/".join(rest[1:]))
                return self._send_json({})
            if method == "DELETE":
                self.store.delete_tag(repo, "/".join(rest[1:]))
                return self._send_json({})
        raise HubStoreError(404, f"Not found: {method} {self.path}")

    # --- read endpoints ----------------------------------------------------------------

    def _validate_yaml(self) -> None:
        """``POST /api/validate-yaml``: 200 ``{"errors": [], ...}``, or 400 with one message per error."""
        body = self._json_body()
        content, repo_type = body.get("content"), body.get("repoType") or "model"
        if not isinstance(content, str) or repo_type not in REPO_TYPES:
            raise HubStoreError(
                400,
                'Expected {"content": README.md text, "repoType": "model"|"dataset"|"space"}',
                "BadRequest",
            )
        errors = card_errors(content, repo_type)
        self._send_json({"errors": [{"message": m} for m in errors], "warnings": []}, 400 if errors else 200)

    def _repo_info(self, repo: RepoRef, meta: dict, revision: str) -> dict:
        commit = self.store.commit(self.store.resolve(repo, revision))
        author = repo.repo_id.split("/")[0]
        return {
            "_id": commit.id[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": author,
            "sha": commit.id,
            "lastModified": commit.date,
            "createdAt": meta.get("created_at"),
            "private": bool(meta.get("private")),
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [{"rfilename": p} for p in sorted(commit.tree)],
        }

    def _refs(self, repo: RepoRef) -> dict:
        refs = self.store.refs(repo)

        def items(kind: str, prefix: str) -> list[dict]:
            return [
                {"name": n, "ref": f"{prefix}{n}", "targetCommit": s} for n, s in sorted(refs[kind].items())
            ]

        return {
            "branches": items("heads", "refs/heads/"),
            "tags": items("tags", "refs/tags/"),
            "converts": [],
            "pullRequests": [],
        }

    def _commits(self, repo: RepoRef, revision: str) -> list[dict]:
        return [
            {
                "id": c.id,
                "title": c.title,
                "message": c.message,
                "authors": [{"user": c.author, "avatar": None}],
                "date": c.date,
            }
            for c in self.store.log(repo, revision)
        ]

    def _tree(self, repo: RepoRef, revision: str, path: str, recursive: bool) -> list[dict]:
        tree = self.store.commit(self.store.resolve(repo, revision)).tree
        prefix = f"{path}/" if path else ""
        if path and path in tree:
            raise HubStoreError(400, f"'{path}' is a file, not a folder", "BadRequest")
        under = {p: v for p, v in tree.items() if p.startswith(prefix)}
        if path and not under:
            raise HubStoreError(404, f"Entry not found: {path}", "EntryNotFound")
        files, folders = [], {}
        for p, (oid, size) in sorted(under.items()):
            parts = p[len(prefix) :].split("/")
            for depth in range(1, len(parts)):
                if recursive or depth == 1:
                    folder = prefix + "/".join(parts[:depth])
                    folders.setdefault(folder, []).append(oid)
            if recursive or len(parts) == 1:
                files.append({"type": "file", "oid": oid, "size": size, "path": p})
        out = [
            {"type": "directory", "oid": _folder_oid(oids), "size": 0, "path": f}
            for f, oids in sorted(folders.items())
        ]
        return out + files

    def _paths_info(self, repo: RepoRef, revision: str, paths: list[str]) -> list[dict]:
        tree = self.store.commit(self.store.resolve(repo, revision)).tree
        out = []
        for path in paths:
            if path in tree:
                out.append({"type": "file", "oid": tree[path][0], "size": tree[path][1], "path": path})
            elif any(p.startswith(path.rstrip("/") + "/") for p in tree):
                oids = [v[0] for p, v in tree.items() if p.startswith(path.rstrip("/") + "/")]
                out.append({"type": "directory", "oid": _folder_oid(oids), "size": 0, "path": path})
        return out

    # --- writes ------------------------------------------------------------------------

    def _preupload(self, repo: RepoRef, revision: str, body: dict) -> dict:
        try:
            tree = self.store.commit(self.store.resolve(repo, revision)).tree
            head = self.store.resolve(repo, revision)
        except HubStoreError:
            tree, head = {}, None
        ignore = [line.strip() for line in (body.get("gitIgnore") or "").splitlines() if line.strip()]
        ignore = [p for p in ignore if not p.startswith("#")]
        files = []
        for item in body.get("files", []):
            path = item["path"]
            files.append(
                {
                    "path": path,
                    "uploadMode": "regular",  # never lfs: content comes base64-encoded in the commit call
                    "shouldIgnore": any(fnmatch(path, p) or fnmatch(path.split("/")[-1], p) for p in ignore),
                    "oid": tree[path][0] if path in tree else None,
                }
            )
        return {"files": files, "commitOid": head}

    def _commit(self, repo: RepoRef, revision: str, query: dict) -> dict:
        if query.get("create_pr") in ("1", "true", "True"):
            self._body()
            raise HubStoreError(400, "The local hub does not support pull requests (create_pr)", "BadRequest")
        raw = self._body()
        header: dict = {}
        additions: dict[str, bytes] = {}
        deletions: list[str] = []
        deleted_folders: list[str] = []
        for line in raw.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value") or {}
            if key == "header":
                header = value
            elif key == "file":
                content = value.get("content", "")
                data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                additions[_clean_path(value["path"])] = data
            elif key == "deletedFile":
                deletions.append(_clean_path(value["path"]))
            elif key == "deletedFolder":
                deleted_folders.append(_clean_path(value["path"]))
            elif key == "lfsFile":
                raise HubStoreError(400, "The local hub stores regular files only (no LFS)", "BadRequest")
            else:
                raise HubStoreError(400, f"Unknown commit operation '{key}'", "BadRequest")
        sha = self.store.create_commit(
            repo,
            revision,
            additions,
            deletions,
            deleted_folders,
            title=header.get("summary") or "Update",
            message=header.get("description") or "",
            parent_commit=header.get("parentCommit"),
        )
        url = f"{self._base_url()}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}/commit/{sha}"
        return {"success": True, "commitOid": sha, "commitUrl": url, "pullRequestUrl": None}

    # --- downloads ---------------------------------------------------------------------

    def _resolve_file(self, repo: RepoRef, revision: str, path: str, head: bool) -> None:
        self._check_access(repo)
        sha = self.store.resolve(repo, revision)
        tree = self.store.commit(sha).tree
        if path not in tree:
            raise _EntryNotFound(sha, path)
        oid, size = tree[path]
        if any(fnmatch(path.split("/")[-1], p) for p in _REDIRECTED):
            # Like an LFS file on the Hub: metadata on the redirect, content at a content-addressed URL.
            query = urlencode({"type": repo.repo_type, "repo": repo.repo_id, "commit": sha})
            location = f"/_blobs/{oid}?{query}"
            return self._send(
                302,
                headers={
                    "Location": location,
                    "X-Repo-Commit": sha,
                    "X-Linked-Etag": f'"{oid}"',
                    "X-Linked-Size": str(size),
                    "ETag": f'"{oid}"',
                },
                head=head,
            )
        self._send_file(self.store.blob_path(oid), oid, size, sha, head)

    def _serve_blob(self, oid: str, query: dict, head: bool) -> None:
        """A blob through the repo and commit that hold it (the redirect of ``_resolve_file``)."""
        repo = RepoRef(query.get("type", ""), query.get("repo", ""))
        self._check_access(repo)
        sha = self.store.resolve(repo, query.get("commit", ""))
        if not any(entry[0] == oid for entry in self.store.commit(sha).tree.values()):
            raise HubStoreError(404, f"Entry not found: blob {oid} at commit {sha}", "EntryNotFound")
        self._send_file(self.store.blob_path(oid), oid, None, sha, head)

    def _send_file(self, blob: Path, oid: str, size: int | None, commit: str | None, head: bool) -> None:
        size = blob.stat().st_size if size is None else size
        start = 0
        status = 200
        headers = {"ETag": f'"{oid}"', "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        if commit:
            headers["X-Repo-Commit"] = commit
        range_header = self.headers.get("Range", "")
        if range_header.startswith("bytes=") and not head:
            first, _, last = range_header[6:].split(",")[0].partition("-")
            if first.isdigit() and not last:
                start = min(int(first), size)
                status = 206
                headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        headers["Content-Length"] = str(size - start)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if head:
            return
        with open(blob, "rb") as fh:
            fh.seek(start)
            while chunk := fh.read(_CHUNK):
                self.wfile.write(chunk)


class _EntryNotFound(HubStoreError):
    def __init__(self, commit: str, path: str) -> None:
        super().__init__(404, f"Entry not found: {path}", "EntryNotFound")
        self.commit = commit


def _split_repo(parts: list[str]) -> tuple[str, list[str]]:
    """``['org', 'name', 'tree', 'main']`` -> ``('org/name', ['tree', 'main'])``."""
    if len(parts) == 1:
        return parts[0], []
    return f"{parts[0]}/{parts[1]}", parts[2:]


def _clean_path(path: str) -> str:
    clean = path.replace("\\", "/").strip("/")
    if not clean or any(part in ("", ".", "..") for part in clean.split("/")):
        raise HubStoreError(400, f"Invalid path in repo: '{path}'", "BadRequest")
    return clean


def _folder_oid(oids: list[str]) -> str:
    import hashlib

    return hashlib.sha1("\n".join(sorted(oids)).encode()).hexdigest()


def card_errors(content: str, repo_type: str = "model") -> list[str]:
    """What is wrong with the metadata of a README.md (empty when valid), as huggingface_hub reads it.

    The card is parsed by huggingface_hub's own ``ModelCard``/``DatasetCard``/``SpaceCard``: the
    YAML block must parse to a mapping, and a ``model-index`` must be one that
    ``model_index_to_eval_results`` reads into valid ``EvalResult`` entries. The Hub checks more
    (license ids, ...); this server does not imitate those rules.
    """
    import yaml
    from huggingface_hub import DatasetCard, ModelCard, SpaceCard
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    if not REGEX_YAML_BLOCK.search(content):
        return []  # no metadata block: nothing to check (and no warning logged by huggingface_hub)
    card_class = {"model": ModelCard, "dataset": DatasetCard, "space": SpaceCard}[repo_type]
    try:
        card_class(content)
    except yaml.YAMLError as exc:
        return [f"Invalid YAML in the metadata block: {exc}"]
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return [f"Invalid metadata: {exc}"]
    return []


class LocalHubServer(ThreadingHTTPServer):
    """The HTTP server of the local Hub: its store, its token, and a deep listen queue."""

    daemon_threads = True
    # The listen backlog (socketserver's default is 5): with many clients connecting at once,
    # those beyond it wait for SYN retransmits (1 s, 3 s, 7 s...) instead of being served.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], store: HubStore, token: str) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.store = store
        self.token = token
        self.requests: list[str] = []  # "METHOD /path" (no query, no header) of each request answered
        self.requests_lock = threading.Lock()
        super().__init__(address, HubRequestHandler)

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the bound socket (IPv6 hosts in brackets)."""
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def new_token() -> str:
    """A fresh random token (256 bits from :mod:`secrets`)."""
    return "hf_" + secrets.token_urlsafe(32)


def check_token(token: str) -> str:
    """``token`` if an HTTP header can carry it as is (visible ASCII, no space), else an error."""
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise LocalHubConfigError(
            "the local Hub token must be a non-empty string of visible ASCII characters without spaces"
            f" (got {type(token).__name__} of length {len(token) if isinstance(token, str) else '-'}):"
            " leave it out to get a random one"
        )
    return token


def is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or an address of 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(host: str, allow_remote: bool) -> None:
    """Refuse a ``host`` that is not loopback unless ``allow_remote``."""
    if not allow_remote and not is_loopback(host):
        raise LocalHubConfigError(
            f"refusing to serve the local Hub on '{host}': it is not a loopback address (127.0.0.1, ::1,"
            " localhost), so other machines could reach it; use --host 127.0.0.1, or pass --allow-remote"
            " (allow_remote=True) to share it on purpose"
        )


def make_server(
    root: str | Path,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    token: str | None = None,
    allow_remote: bool = False,
) -> LocalHubServer:
    """A server bound to ``host:port`` (``port=0``: a free port) storing repos under ``root``.

    Args:
        root: Storage folder (created if missing).
        host: Interface to bind: loopback only, unless ``allow_remote``.
        port: Port; 0 picks a free one.
        token: The token that writes and private reads need; a random one (``server.token``)
            when omitted.
        allow_remote: Allow a ``host`` that other machines can reach (logs a warning).

    Raises:
        LocalHubConfigError: ``host`` is not loopback and ``allow_remote`` is false, or the
            token is empty or not header-safe.
    """
    check_host(host, allow_remote)
    token = new_token() if token is None else check_token(token)
    server = LocalHubServer((host, port), HubStore(root), token)
    if not is_loopback(host):
        logger.warning(
            "the local Hub at %s accepts connections from other machines (allow_remote): it speaks plain"
            " HTTP, so its token and files cross the network unencrypted; keep it on a trusted network",
            server.url,
        )
    return server


def serve(
    root: str | Path,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    token: str | None = None,
    allow_remote: bool = False,
    ready: threading.Event | None = None,
) -> None:
    """Serve forever (until KeyboardInterrupt); used by ``hf-recycle hub serve``.

    Prints the URL on the first line of stdout; a generated token (``token=None``) is printed
    once, on stderr. A given token is never printed.
    """
    server = make_server(root, host, port, token=token, allow_remote=allow_remote)
    logger.info("local hub serving %s at %s (Ctrl-C to stop)", root, server.url)
    print(server.url, flush=True)
    if token is None:
        print(
            f"local hub token (generated for this run; clients send it as HF_TOKEN): {server.token}",
            file=sys.stderr,
            flush=True,
        )
    if ready is not None:
        ready.set()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
