"""Read-only view of the standard Hugging Face cache, for resolving specs offline.

Layout (huggingface_hub's): ``<cache>/models--org--name/refs/<branch or tag>`` holds a commit
sha, ``snapshots/<sha>/<files>`` the downloaded files of that commit.
"""

from __future__ import annotations

import os
from pathlib import Path

from hf_recycle.errors import HubRepoNotFoundError, HubRevisionNotFoundError
from hf_recycle.hub.spec import is_commit_sha


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The hub cache folder: ``cache_dir`` or huggingface_hub's (HF_HUB_CACHE)."""
    from huggingface_hub import constants

    return Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE)


def repo_folder(repo_id: str, cache_dir: str | Path | None = None) -> Path:
    """The cache folder of a model repo (it may not exist)."""
    return cache_root(cache_dir) / ("models--" + repo_id.replace("/", "--"))


def write_ref(repo_id: str, revision: str, commit: str, cache_dir: str | Path | None = None) -> None:
    """Record in the cache that ``revision`` pointed to ``commit`` (what hf_hub_download does for names)."""
    if is_commit_sha(revision) or revision == commit:
        return
    ref = repo_folder(repo_id, cache_dir) / "refs" / revision
    if ref.is_file() and ref.read_text().strip() == commit:
        return
    ref.parent.mkdir(parents=True, exist_ok=True)
    tmp = ref.with_name(ref.name + ".tmp")
    tmp.write_text(commit)
    tmp.replace(ref)


class CacheSource:
    """The revisions and files of cached repos, with the same interface as the online client."""

    def __init__(self, cache_dir: str | Path | None = None) -> None:
        self.cache_dir = cache_root(cache_dir)
        self.endpoint = "the local cache"

    def _folder(self, repo_id: str, spec: str) -> Path:
        folder = repo_folder(repo_id, self.cache_dir)
        if not folder.is_dir():
            raise HubRepoNotFoundError(
                f"repo '{repo_id}' (spec '{spec}') is not in the local cache {self.cache_dir} and HF_HUB_OFFLINE is"
                " set: unset HF_HUB_OFFLINE to fetch it, or warm the cache by running once online (a local folder"
                " must exist or start with ./, ../, / or ~)"
            )
        return folder

    def refs(self, repo_id: str, spec: str) -> list[tuple[str, str, str]]:
        refs_dir = self._folder(repo_id, spec) / "refs"
        out = []
        if refs_dir.is_dir():
            for path in sorted(refs_dir.rglob("*")):
                if path.is_file() and not path.name.endswith(".tmp"):
                    out.append((path.relative_to(refs_dir).as_posix(), "branch", path.read_text().strip()))
        return out

    def commit_of(self, repo_id: str, revision: str, spec: str) -> str:
        folder = self._folder(repo_id, spec)
        if is_commit_sha(revision) and (folder / "snapshots" / revision).is_dir():
            return revision
        ref = folder / "refs" / revision
        if ref.is_file():
            return ref.read_text().strip()
        raise HubRevisionNotFoundError(
            f"revision '{revision}' of '{repo_id}' (spec '{spec}') is not in the local cache and HF_HUB_OFFLINE is"
            " set: unset HF_HUB_OFFLINE to resolve it on the Hub"
        )

    def files(self, repo_id: str, commit: str, spec: str) -> list[str]:
        snapshot = self._folder(repo_id, spec) / "snapshots" / commit
        out = []
        for root, _dirs, names in os.walk(snapshot):
            rel = Path(root).relative_to(snapshot)
            out += [(rel / name).as_posix() for name in names]
        return out
