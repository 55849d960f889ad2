"""Download exactly what a merge needs of each pinned checkpoint, by commit sha, into the HF cache.

Only configs, tokenizer files and safetensors weights (plus their index) are fetched;
pickle weights (``*.bin``, ``*.pt``, ``*.pth``) only when ``allow_pickle=True`` and the
checkpoint has no safetensors. Files land in the standard cache
(``models--org--name/snapshots/<sha>/...``), so ``HF_HUB_OFFLINE=1`` works once it is warm.
A checkpoint that cannot fit on the cache's disk is refused before its download starts, and a
disk that fills up meanwhile is a :class:`~hf_recycle.errors.DiskFullError`, not a traceback.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Iterable
from pathlib import Path

from hf_recycle.errors import CheckpointNotFoundError, PickleRefusedError
from hf_recycle.hub.files import FolderContents
from hf_recycle.hub.pins import PinnedCheckpoint
from hf_recycle.outputs import check_free_space, disk_full_errors

logger = logging.getLogger(__name__)

__all__ = ["fetch_checkpoints", "download_checkpoint"]

_LARGE_DOWNLOAD = 50 * 1024**2
_CACHE_ADVICE = "free some space, or set HF_HUB_CACHE to a folder on a larger disk"
_CACHE_OUTCOME = "the files fetched before stay in the cache, complete, and no partial file is left"


def fetch_checkpoints(
    specs: str | Iterable[str],
    *,
    endpoint: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
    allow_pickle: bool = False,
) -> list[tuple[PinnedCheckpoint, Path]]:
    """Resolve specs and download each checkpoint; local folders pass through.

    Args:
        specs: Checkpoint specs (see :func:`hf_recycle.hub.resolve.resolve`).
        endpoint: Hub endpoint URL; defaults to huggingface_hub's (``HF_ENDPOINT``).
        token: Hub token; defaults to huggingface_hub's (``HF_TOKEN``, stored login).
        cache_dir: Hub cache folder; defaults to huggingface_hub's (``HF_HUB_CACHE``).
        allow_pickle: Download pickle weights of checkpoints that have no safetensors.

    Returns:
        ``(pin, folder)`` per checkpoint, where ``folder`` holds its files (the subfolder
        inside the cached snapshot, or the local folder).

    Raises:
        PickleRefusedError: A checkpoint has only pickle weights and ``allow_pickle`` is false.
        DiskFullError: The cache's disk cannot hold a checkpoint, or filled up while downloading.
    """
    from hf_recycle.hub.resolve import resolve

    pins = resolve(specs, endpoint=endpoint, token=token, cache_dir=cache_dir)
    client = None
    out: list[tuple[PinnedCheckpoint, Path]] = []
    for pin in pins:
        if client is None and not pin.is_local and not _offline():
            from hf_recycle.hub.client import HubClient

            client = HubClient(endpoint=endpoint, token=token)
        out.append((pin, _download(pin, client, cache_dir, allow_pickle)))
    return out


def download_checkpoint(
    pin: PinnedCheckpoint,
    *,
    endpoint: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
    allow_pickle: bool = False,
) -> Path:
    """Download the files a merge needs of one pinned checkpoint and return its local folder.

    Offline (``HF_HUB_OFFLINE=1``) the folder comes from the cache, or
    :class:`~hf_recycle.errors.CheckpointNotFoundError` says it is not there.
    """
    client = None
    if not pin.is_local and not _offline():
        from hf_recycle.hub.client import HubClient

        client = HubClient(endpoint=endpoint, token=token)
    return _download(pin, client, cache_dir, allow_pickle)


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode()


def _download(pin: PinnedCheckpoint, client, cache_dir: str | Path | None, allow_pickle: bool) -> Path:
    from hf_recycle.hub.cache import cache_root, repo_folder, write_ref

    if pin.is_local:
        return Path(pin.local_path or pin.spec)
    assert pin.repo_id is not None and pin.commit is not None
    snapshot = repo_folder(pin.repo_id, cache_dir) / "snapshots" / pin.commit
    folder = snapshot / pin.subfolder if pin.subfolder else snapshot
    if client is None:  # offline: the cache must hold it
        contents = FolderContents.of_folder(folder)
        if not contents.has_weights:
            raise CheckpointNotFoundError(
                f"'{pin.spec}' ({pin.commit[:7]}) is not in the local cache and HF_HUB_OFFLINE is set: unset"
                " HF_HUB_OFFLINE to download it, or run once online to warm the cache"
            )
        _refuse_pickle(pin, contents, allow_pickle)
        return folder

    with client.errors(pin.spec, pin.repo_id, pin.commit):
        entries = [
            e
            for e in client.tree(pin.repo_id, pin.commit)
            if posixpath.dirname(e.path) == (pin.subfolder or "")
        ]
    contents = FolderContents.from_names(posixpath.basename(e.path) for e in entries)
    if not contents.has_weights:
        raise CheckpointNotFoundError(
            f"'{pin.spec}' ({pin.commit[:7]}) holds no weights on {client.endpoint}"
        )
    _refuse_pickle(pin, contents, allow_pickle)
    names = contents.files_to_download(allow_pickle)
    sizes = {posixpath.basename(e.path): e.size for e in entries}
    total = sum(sizes.get(n, 0) for n in names)
    log = logger.info if total >= _LARGE_DOWNLOAD else logger.debug
    log("downloading %s: %d files, %.1f MB", pin.display, len(names), total / 1e6)
    # files of this snapshot already in the cache are not fetched again
    missing = sum(sizes.get(n, 0) for n in names if not (folder / n).is_file())
    cache = cache_root(cache_dir)
    what = f"the download of '{pin.spec}' into the Hub cache"
    check_free_space(cache, missing, what=what, advice=_CACHE_ADVICE)

    from huggingface_hub import hf_hub_download

    with disk_full_errors(what, cache, needed=missing, outcome=_CACHE_OUTCOME, advice=_CACHE_ADVICE):
        for name in names:
            with client.errors(pin.spec, pin.repo_id, pin.commit):
                path = hf_hub_download(
                    pin.repo_id,
                    name,
                    subfolder=pin.subfolder,
                    revision=pin.commit,
                    endpoint=client.endpoint,
                    token=client.token,
                    cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
                )
            logger.debug("fetched %s", path)
    if pin.revision:
        write_ref(pin.repo_id, pin.revision, pin.commit, cache_dir)
    return folder


def _refuse_pickle(pin: PinnedCheckpoint, contents: FolderContents, allow_pickle: bool) -> None:
    if contents.pickle_only and not allow_pickle:
        files = ", ".join(contents.pickle_files)
        raise PickleRefusedError(
            f"'{pin.spec}' holds only pickle weights ({files}), which can run arbitrary code when loaded:"
            " convert them to safetensors, or pass allow_pickle=True (--allow-pickle) if you trust this repo"
        )
