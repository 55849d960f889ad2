"""Run the local Hub in a background thread and publish folders to it with the real client.

Example:
    >>> with LocalHub() as hub:  # doctest: +SKIP
    ...     sha = hub.publish("ckpt-0", "demo/tiny", branch="step-1")
    ...     hub.api().list_repo_refs("demo/tiny")  # or HfApi(endpoint=hub.endpoint, token=hub.token)
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from hf_recycle.testing.server import check_host, check_token, make_server, new_token


class LocalHub:
    """A local Hub-compatible server on a free port of 127.0.0.1, in a background thread.

    Writes and reads of private repos need :attr:`token` (``hub.api()`` sends it; a
    subprocess gets it as ``HF_TOKEN``).

    Args:
        root: Storage folder; a temporary folder (removed on stop) when omitted.
        host: Interface to bind: loopback only, unless ``allow_remote``.
        port: Port to bind; 0 picks a free one.
        token: The server's token; a fresh random one when omitted.
        allow_remote: Allow a ``host`` that other machines can reach (logs a warning).

    Raises:
        LocalHubConfigError: ``host`` is not loopback and ``allow_remote`` is false, or the
            token is empty or not header-safe.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        allow_remote: bool = False,
    ) -> None:
        check_host(host, allow_remote)
        self.token = new_token() if token is None else check_token(token)
        self._owns_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="hf-recycle-local-hub-"))
        self.host = host
        self.port = port
        self.allow_remote = allow_remote
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT`` of the running server."""
        if self._server is None:
            raise RuntimeError("LocalHub is not started: use it as a context manager or call start()")
        return self._server.url

    def start(self) -> LocalHub:
        self._server = make_server(
            self.root, self.host, self.port, token=self.token, allow_remote=self.allow_remote
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def requests(self) -> list[str]:
        """``"METHOD /path"`` of every request the server answered so far (no query string, no header)."""
        if self._server is None:
            raise RuntimeError("LocalHub is not started")
        with self._server.requests_lock:
            return list(self._server.requests)

    def api(self, token: str | bool | None = None):
        """An ``HfApi`` bound to this server, with :attr:`token` unless told otherwise (``False``: none)."""
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token if token is None else token)

    def publish(
        self,
        folder: str | Path,
        repo_id: str,
        *,
        branch: str | None = None,
        tag: str | None = None,
        path_in_repo: str | None = None,
        message: str | None = None,
        private: bool = False,
    ) -> str:
        """Upload ``folder`` as one commit with the real huggingface_hub client; returns the commit sha.

        Args:
            folder: Local folder to upload.
            repo_id: ``org/name``; created if missing (``private`` applies then).
            branch: Branch to commit to; created from ``main`` if missing. Default ``main``.
            tag: Tag to create on the new commit.
            path_in_repo: Subfolder to upload into (``checkpoint-500``); the root by default.
            message: Commit title.
            private: Create the repo private.
        """
        api = self.api()
        api.create_repo(repo_id, private=private, exist_ok=True)
        if branch and branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            path_in_repo=path_in_repo,
            revision=branch,
            commit_message=message or f"Upload {Path(folder).name}",
        )
        if tag:
            api.create_tag(repo_id, tag=tag, revision=info.oid)
        return info.oid
