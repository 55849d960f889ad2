"""The checkpoint spec grammar (see DESIGN.md, "Checkpoint specs").

=============================  =====================================================
``./dir``, ``/abs/dir``        a local checkpoint folder
``org/name``                   branch ``main`` of a Hub repo
``org/name@rev``               a branch, tag or commit sha
``org/name@rev:sub/folder``    a subfolder at a revision
``org/name@step-*``            every branch and tag matching the glob (natural order)
``org/name@main:checkpoint-*`` every matching subfolder at that revision
``org/name@history``           every commit of ``main`` that changed weight files
=============================  =====================================================

A spec is a local folder when the path exists or starts with ``./``, ``../``, ``/`` or ``~``.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from typing import NoReturn

from hf_recycle.errors import SpecError

DEFAULT_REVISION = "main"
HISTORY = "history"

_GLOB_CHARS = re.compile(r"[*?\[]")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
_LOCAL_PREFIXES = ("./", "../", "/", "~", ".\\", "..\\")


@dataclass(frozen=True)
class CheckpointSpec:
    """One parsed spec: a local folder, or a Hub repo with a revision and subfolder (maybe globs)."""

    raw: str
    local_path: str | None = None
    repo_id: str | None = None
    revision: str = DEFAULT_REVISION
    subfolder: str | None = None

    @property
    def is_local(self) -> bool:
        return self.local_path is not None

    @property
    def is_history(self) -> bool:
        return self.revision == HISTORY

    @property
    def revision_is_glob(self) -> bool:
        return is_glob(self.revision)

    @property
    def subfolder_is_glob(self) -> bool:
        return self.subfolder is not None and is_glob(self.subfolder)


def is_glob(text: str) -> bool:
    """Whether ``text`` holds glob characters (``*``, ``?``, ``[``)."""
    return bool(_GLOB_CHARS.search(text))


def is_commit_sha(text: str | None) -> bool:
    """Whether ``text`` is a full 40-hex commit sha."""
    return bool(text) and bool(_COMMIT_SHA.match(text))


def is_local_spec(spec: str) -> bool:
    """Whether ``spec`` names a local folder: it exists, or starts with ./, ../, / or ~."""
    return spec in (".", "..") or spec.startswith(_LOCAL_PREFIXES) or os.path.exists(spec)


def parse_spec(spec: str) -> CheckpointSpec:
    """Parse one checkpoint spec string.

    Args:
        spec: A spec such as ``"org/run@step-*"`` or ``"./checkpoints/ckpt-3"``.

    Returns:
        The parsed spec; globs are kept as written (expansion needs the Hub).

    Raises:
        SpecError: The spec is empty or malformed (the message names it and shows the expected form).
    """
    text = str(spec).strip()
    if not text:
        raise SpecError("empty checkpoint spec: pass a local folder or a Hub spec such as 'org/name@main'")
    if is_local_spec(text):
        return CheckpointSpec(raw=text, local_path=os.path.abspath(os.path.expanduser(text)))
    if _SPACE_OR_CONTROL.search(text):
        _malformed(
            text, "contains whitespace or control characters (a local folder must exist or start with ./)"
        )
    if text.count("@") > 1:
        _malformed(text, "has more than one '@' (one '@rev' per spec)")
    repo_part, revision, subfolder = text, DEFAULT_REVISION, None
    if "@" in text:
        repo_part, rest = text.split("@", 1)
        revision, sep, sub = rest.partition(":")
        subfolder = sub if sep else None
        if not revision:
            raise SpecError(
                f"spec '{text}' has an empty revision after '@': write 'org/name@main' or drop the '@'"
            )
        _check_revision(text, revision)
    elif ":" in text:
        repo_part, subfolder = text.split(":", 1)
    if subfolder is not None:
        subfolder = _check_subfolder(text, subfolder)
    _check_repo_id(text, repo_part)
    return CheckpointSpec(raw=text, repo_id=repo_part, revision=revision, subfolder=subfolder)


_EXPECTED = "expected 'org/name', 'org/name@rev' or 'org/name@rev:sub/folder'"
_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")


def _malformed(text: str, problem: str) -> NoReturn:
    raise SpecError(f"spec '{text}' {problem}: {_EXPECTED}")


def _check_revision(text: str, revision: str) -> None:
    """Branch, tag or sha names follow git's ref rules (globs allowed: ``step-*``)."""
    problem = None
    if any(c in revision for c in "\\^~"):
        problem = "contains '\\', '^' or '~' (git revision syntax such as main~1 is not supported)"
    elif ".." in revision or "//" in revision:
        problem = "contains '..' or '//'"
    elif revision.startswith(("/", ".", "-")) or revision.endswith(("/", ".", ".lock")):
        problem = "starts with '/', '.' or '-', or ends with '/', '.' or '.lock'"
    if problem:
        _malformed(
            text,
            f"has an invalid revision '{revision}', which {problem}; a revision is a branch, tag or commit sha",
        )


def _check_subfolder(text: str, subfolder: str) -> str:
    subfolder = subfolder.strip("/")
    if not subfolder:
        raise SpecError(f"spec '{text}' has an empty subfolder after ':': write 'org/name@rev:sub/folder'")
    if ":" in subfolder or "\\" in subfolder:
        _malformed(
            text,
            f"has a subfolder '{subfolder}' with ':' or '\\' (one ':sub/folder' per spec, '/' between folders)",
        )
    if any(part in ("", ".", "..") for part in subfolder.split("/")):
        _malformed(text, f"has a subfolder '{subfolder}' that is not a plain relative path inside the repo")
    return subfolder


def _check_repo_id(text: str, repo_id: str) -> None:
    if is_glob(repo_id):
        _malformed(
            text, "has a glob in the repo id; globs go in the revision or subfolder ('org/name@step-*')"
        )
    if not _REPO_ID.match(repo_id):
        _malformed(
            text,
            "is neither an existing local folder nor a Hub spec (a local folder that does not exist yet"
            " must start with ./, ../, / or ~)",
        )
    if "--" in repo_id or ".." in repo_id or any(part.endswith((".", "-")) for part in repo_id.split("/")):
        _malformed(
            text, f"has an invalid repo id '{repo_id}' (no '--' or '..', no name ending in '.' or '-')"
        )


def format_spec(repo_id: str, revision: str | None, subfolder: str | None) -> str:
    """The spec string of one pinned place: ``org/name@rev[:sub]``."""
    spec = f"{repo_id}@{revision or DEFAULT_REVISION}"
    return f"{spec}:{subfolder}" if subfolder else spec


def natural_key(text: str) -> tuple:
    """Sort key that orders embedded numbers by value: ``step-2`` before ``step-10``."""
    parts = re.split(r"(\d+)", text)
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts)), text


def match_path(pattern: str, path: str) -> bool:
    """Glob match segment by segment: ``*`` never crosses ``/`` (``runs/*`` does not match ``runs/a/b``)."""
    pattern_parts = pattern.strip("/").split("/")
    path_parts = path.strip("/").split("/")
    return len(pattern_parts) == len(path_parts) and all(
        fnmatch.fnmatchcase(name, pat) for pat, name in zip(pattern_parts, path_parts, strict=True)
    )
