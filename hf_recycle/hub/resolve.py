"""Checkpoint specs to pinned checkpoints (repo, revision, commit sha, subfolder, kind).

Online, the Hub is asked with ``list_repo_refs`` (revision globs), ``model_info`` (one
revision to its sha), ``list_repo_tree`` (folders and weight files at a commit) and
``list_repo_commits`` (``@history``). With ``HF_HUB_OFFLINE=1`` the same specs resolve
from the local cache (branch and tag names that were downloaded before, their snapshots).
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from hf_recycle.errors import CheckpointNotFoundError, SpecError
from hf_recycle.hub.files import FolderContents, is_pickle_weight, is_safe_weight
from hf_recycle.hub.pins import PinnedCheckpoint
from hf_recycle.hub.spec import CheckpointSpec, format_spec, match_path, natural_key, parse_spec

logger = logging.getLogger(__name__)

__all__ = ["resolve", "resolve_spec", "PinnedCheckpoint"]


class _Source(Protocol):
    endpoint: str

    def refs(self, repo_id: str, spec: str) -> list[tuple[str, str, str]]: ...
    def commit_of(self, repo_id: str, revision: str, spec: str) -> str: ...
    def files(self, repo_id: str, commit: str, spec: str) -> list[str]: ...


class _HubSource:
    """The Hub, through :class:`~hf_recycle.hub.client.HubClient`, with errors naming the spec."""

    def __init__(self, endpoint: str | None, token: str | bool | None) -> None:
        from hf_recycle.hub.client import HubClient

        self.client = HubClient(endpoint=endpoint, token=token)
        self.endpoint = self.client.endpoint

    def refs(self, repo_id: str, spec: str) -> list[tuple[str, str, str]]:
        with self.client.errors(spec, repo_id, None):
            return self.client.refs(repo_id)

    def commit_of(self, repo_id: str, revision: str, spec: str) -> str:
        with self.client.errors(spec, repo_id, revision):
            return self.client.commit_of(repo_id, revision)

    def files(self, repo_id: str, commit: str, spec: str) -> list[str]:
        return [entry.path for entry in self.entries(repo_id, commit, spec)]

    def entries(self, repo_id: str, commit: str, spec: str):
        with self.client.errors(spec, repo_id, commit):
            return self.client.tree(repo_id, commit)

    def history(self, repo_id: str, spec: str, subfolder: str | None) -> list[str]:
        """Commits of ``main``, oldest first, whose weight files (in ``subfolder``) differ from the previous one."""
        with self.client.errors(spec, repo_id, "main"):
            commits = self.client.commits(repo_id, "main")
        kept: list[str] = []
        previous: dict[str, str] = {}
        for commit in reversed(commits):
            signature = {
                e.path: e.oid
                for e in self.entries(repo_id, commit.commit_id, spec)
                if posixpath.dirname(e.path) == (subfolder or "")
                and (
                    is_safe_weight(posixpath.basename(e.path)) or is_pickle_weight(posixpath.basename(e.path))
                )
            }
            if signature and signature != previous:
                kept.append(commit.commit_id)
                logger.debug("%s: keeping %s (%s)", spec, commit.commit_id[:7], commit.title)
            previous = signature
        return kept


def resolve(
    specs: str | Iterable[str],
    endpoint: str | None = None,
    token: str | bool | None = None,
    *,
    cache_dir: str | Path | None = None,
) -> list[PinnedCheckpoint]:
    """Resolve checkpoint specs to pinned checkpoints, in the order given (globs in natural order).

    Args:
        specs: One spec or several (see the grammar in :mod:`hf_recycle.hub.spec`): local
            folders, ``org/name[@rev][:sub]``, revision globs ``org/name@step-*``,
            subfolder globs ``org/name@main:checkpoint-*`` and ``org/name@history``.
        endpoint: Hub endpoint URL; defaults to huggingface_hub's (``HF_ENDPOINT``).
        token: Hub token; defaults to huggingface_hub's (``HF_TOKEN``, stored login).
            Never printed or written.
        cache_dir: Hub cache used when ``HF_HUB_OFFLINE`` is set; defaults to huggingface_hub's.

    Returns:
        One :class:`PinnedCheckpoint` per checkpoint.

    Raises:
        SpecError: A spec is malformed or a glob matches nothing.
        HubRepoNotFoundError: A repo does not exist (or is not in the cache, offline).
        HubRevisionNotFoundError: A branch, tag or sha does not exist.
        HubAuthError: A repo is private and no (valid) token was found.
        CheckpointNotFoundError: A folder holds no weights.
        HubUnavailableError: The endpoint cannot be reached.

    Example:
        >>> resolve(["org/run@step-*"])  # doctest: +SKIP
        [PinnedCheckpoint(repo_id='org/run', revision='step-2', commit='1f3c...', ...), ...]
    """
    from huggingface_hub import constants

    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    parsed = [parse_spec(os.fspath(s)) for s in specs]
    if not parsed:
        raise SpecError("no checkpoint spec given: pass at least one local folder or Hub spec")
    source: _Source | None = None
    pins: list[PinnedCheckpoint] = []
    for spec in parsed:
        if spec.is_local:
            pins.append(_resolve_local(spec))
            continue
        if source is None:
            if constants.is_offline_mode():
                from hf_recycle.hub.cache import CacheSource

                source = CacheSource(cache_dir)
            else:
                source = _HubSource(endpoint, token)
        expanded = resolve_spec(spec, source)
        if spec.revision_is_glob or spec.subfolder_is_glob or spec.is_history:
            logger.info("%s -> %d checkpoints", spec.raw, len(expanded))
        pins.extend(expanded)
    return pins


def _resolve_local(spec: CheckpointSpec) -> PinnedCheckpoint:
    path = Path(spec.local_path or spec.raw)
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise CheckpointNotFoundError(
            f"checkpoint folder '{spec.raw}' {what}: pass a folder that holds config.json and model.safetensors"
            " (or adapter_config.json and adapter_model.safetensors)"
        )
    contents = FolderContents.of_folder(path)
    if not contents.has_weights:
        raise CheckpointNotFoundError(
            f"checkpoint folder '{spec.raw}' holds no weights (*.safetensors, adapter_model.safetensors or"
            " pytorch_model.bin): pass the folder that save_pretrained wrote"
        )
    return PinnedCheckpoint(
        repo_id=None,
        revision=None,
        commit=None,
        subfolder=None,
        kind=contents.kind,
        spec=spec.raw,
        local_path=str(path.resolve()),
    )


def resolve_spec(spec: CheckpointSpec, source: _Source) -> list[PinnedCheckpoint]:
    """Expand one parsed Hub spec against ``source`` (the Hub or the local cache)."""
    repo_id = spec.repo_id
    assert repo_id is not None
    revisions = _expand_revisions(spec, source)
    pins: list[PinnedCheckpoint] = []
    for revision, commit in revisions:
        files = source.files(repo_id, commit, spec.raw)
        for subfolder in _expand_subfolders(spec, files, revision, commit):
            contents = _contents(files, subfolder)
            if not contents.has_weights:
                where = f"subfolder '{subfolder}'" if subfolder else "the root folder"
                raise CheckpointNotFoundError(
                    f"'{format_spec(repo_id, revision, subfolder)}' (from spec '{spec.raw}'): {where} of"
                    f" '{repo_id}' at {commit[:7]} holds no weights (*.safetensors, adapter_model.safetensors"
                    " or pytorch_model.bin): point the spec at the folder that holds them, e.g. 'org/name@main:checkpoint-*'"
                )
            pins.append(
                PinnedCheckpoint(
                    repo_id=repo_id,
                    revision=revision,
                    commit=commit,
                    subfolder=subfolder,
                    kind=contents.kind,
                    spec=format_spec(repo_id, revision, subfolder),
                )
            )
    return pins


def _expand_revisions(spec: CheckpointSpec, source: _Source) -> list[tuple[str, str]]:
    repo_id = spec.repo_id
    assert repo_id is not None
    if spec.is_history:
        if spec.subfolder_is_glob:
            raise SpecError(
                f"spec '{spec.raw}': @history takes a plain subfolder, not a glob; use 'org/name@main:checkpoint-*'"
            )
        if not isinstance(source, _HubSource):
            raise SpecError(
                f"spec '{spec.raw}': @history needs the Hub (it reads the commit list) but HF_HUB_OFFLINE is set;"
                " resolve it online once and use the pinned specs from checkpoints.lock.json"
            )
        commits = source.history(repo_id, spec.raw, spec.subfolder)
        if not commits:
            raise SpecError(
                f"spec '{spec.raw}' expands to nothing: no commit of main in '{repo_id}' on {source.endpoint}"
                " changed weight files" + (f" in '{spec.subfolder}'" if spec.subfolder else "")
            )
        return [(sha, sha) for sha in commits]
    if spec.revision_is_glob:
        matches: dict[str, str] = {}
        refs = source.refs(repo_id, spec.raw)
        for name, _kind, commit in refs:  # branches come first: a branch wins over a same-named tag
            if match_path(spec.revision, name) and name not in matches:
                matches[name] = commit
        if not matches:
            names = ", ".join(sorted({name for name, _, _ in refs}, key=natural_key)[:20]) or "none"
            raise SpecError(
                f"spec '{spec.raw}' expands to nothing: no branch or tag of '{repo_id}' on {source.endpoint}"
                f" matches '{spec.revision}' (branches and tags: {names})"
            )
        return [(name, matches[name]) for name in sorted(matches, key=natural_key)]
    return [(spec.revision, source.commit_of(repo_id, spec.revision, spec.raw))]


def _expand_subfolders(
    spec: CheckpointSpec, files: Sequence[str], revision: str, commit: str
) -> list[str | None]:
    if not spec.subfolder_is_glob:
        if spec.subfolder and not any(f.startswith(spec.subfolder + "/") for f in files):
            raise CheckpointNotFoundError(
                f"'{format_spec(spec.repo_id or '', revision, spec.subfolder)}' (from spec '{spec.raw}'):"
                f" subfolder '{spec.subfolder}' does not exist in '{spec.repo_id}' at {commit[:7]}"
            )
        return [spec.subfolder]
    assert spec.subfolder is not None
    folders = {posixpath.dirname(f) for f in files if posixpath.dirname(f)}
    matching = sorted((d for d in folders if match_path(spec.subfolder, d)), key=natural_key)
    with_weights = [d for d in matching if _contents(files, d).has_weights]
    for skipped in sorted(set(matching) - set(with_weights)):
        logger.debug("%s: skipping '%s' (no weights)", spec.raw, skipped)
    if not with_weights:
        raise SpecError(
            f"spec '{spec.raw}' expands to nothing: no folder matching '{spec.subfolder}' with weights in"
            f" '{spec.repo_id}' at revision '{revision}' ({commit[:7]})"
            + (f"; folders that match but hold no weights: {', '.join(matching)}" if matching else "")
        )
    return list(with_weights)


def _contents(files: Sequence[str], subfolder: str | None) -> FolderContents:
    folder = subfolder or ""
    return FolderContents.from_names(posixpath.basename(f) for f in files if posixpath.dirname(f) == folder)
