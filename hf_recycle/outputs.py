"""Output folders that faults leave behind nothing in: staging, leftovers of killed runs, a full disk.

A folder is written into a hidden sibling (``.NAME.<8 chars>.partial``) and renamed into place
only when everything succeeded (:func:`staging_folder`). An exception, Ctrl-C or SIGTERM (which
the command line turns into an exception) removes the sibling. A SIGKILL or a power cut cannot,
so the sibling holds a small owner record (:data:`OWNER_FILE`: host, process id and start time)
and the next run to the same output removes the siblings whose owner is gone
(:func:`remove_stale_leftovers`). A full disk is refused up front when the size is known
(:func:`check_free_space`), and a write that fails with ``ENOSPC`` becomes a
:class:`~hf_recycle.errors.DiskFullError` that says which disk, how much was needed and free,
and what was kept (:func:`disk_full_errors`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from hf_recycle.errors import DiskFullError, OutputExistsError
from hf_recycle.processes import may_run, this_process

logger = logging.getLogger(__name__)

__all__ = [
    "OWNER_FILE",
    "check_free_space",
    "disk_full_errors",
    "format_bytes",
    "is_disk_full",
    "raise_if_disk_full",
    "remove_stale_leftovers",
    "staging_folder",
    "write_text_atomic",
]

#: The owner record inside a staging (``.partial``) or trash (``.old``) folder.
OWNER_FILE = ".hf-recycle-owner.json"

# ``.NAME.<8 chars>.partial`` / ``.old``: 8 hex chars now, tempfile's [a-z0-9_] in older versions.
_LEFTOVER = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.(?P<kind>partial|old)")
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_MERGE_ADVICE = "free some space or choose another output folder"


# --- staging -------------------------------------------------------------------------------


@contextlib.contextmanager
def staging_folder(output: Path, overwrite: bool, needed: int | None = None) -> Iterator[Path]:
    """A hidden sibling of ``output`` that is renamed into place if the block succeeds.

    Before it is made, leftovers of killed runs to the same ``output`` are removed and, when
    ``needed`` is given, the disk must have that many bytes free. The folder gets the mode a
    plain ``mkdir`` gives (``0o777`` less the umask). On any exception (KeyboardInterrupt and
    SIGTERM included) it is deleted and ``output`` is left as it was; a disk that filled up
    becomes a :class:`~hf_recycle.errors.DiskFullError`.

    Raises:
        DiskFullError: ``needed`` bytes are not free, or a write ran out of space.
        OutputExistsError: ``output`` appeared meanwhile and ``overwrite`` is off.
    """
    parent = output.parent
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_leftovers(output)
    if needed is not None:
        check_free_space(parent, needed, what=f"the merge into '{output}'", advice=_MERGE_ADVICE)
    tmp = _owned_sibling(output, "partial")
    try:
        yield tmp
        (tmp / OWNER_FILE).unlink()
        if output.exists() or output.is_symlink():
            if not overwrite:
                raise OutputExistsError(
                    f"output folder '{output}' appeared during the merge: pass --overwrite to replace it"
                )
            _replace(output, tmp)
        else:
            os.rename(tmp, output)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise _disk_full(
                f"the merge into '{output}'", parent, needed, _MERGE_ADVICE, during=True,
                outcome="nothing was written (the partial folder was removed)",
            ) from exc  # fmt: skip
        raise


def _replace(output: Path, tmp: Path) -> None:
    """Swap ``tmp`` in for ``output``; should the swap fail, ``output`` is put back."""
    trash = _owned_sibling(output, "old")
    try:
        os.rename(output, trash / "old")
        try:
            os.rename(tmp, output)
        except BaseException:
            os.rename(trash / "old", output)
            raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def _owned_sibling(output: Path, kind: str) -> Path:
    """A new folder ``.NAME.<8 hex>.KIND`` next to ``output`` holding this process's owner record."""
    while True:
        path = output.parent / f".{output.name}.{secrets.token_hex(4)}.{kind}"
        try:
            path.mkdir(0o777)  # the umask applies, as for any mkdir
            break
        except FileExistsError:
            continue
    try:
        (path / OWNER_FILE).write_text(json.dumps({"output": output.name, **this_process()}) + "\n")
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path


# --- leftovers of killed runs --------------------------------------------------------------


def remove_stale_leftovers(output: Path) -> tuple[int, int]:
    """Remove the ``.partial`` and ``.old`` siblings of ``output`` whose owner process is gone.

    A sibling is removed only when its owner record names this host (and this boot and PID
    namespace) and its process no longer runs (no such PID, a zombie, or a PID reused by a
    process started at another time). Siblings of live processes, of other hosts, or without a
    record are kept (the latter with a warning).

    Returns:
        ``(folders removed, bytes freed)``.
    """
    parent = output.parent
    if not parent.is_dir():
        return 0, 0
    removed, freed, unknown = 0, 0, []
    for path in sorted(parent.iterdir()):
        match = _LEFTOVER.fullmatch(path.name)
        if match is None or match["name"] != output.name or path.is_symlink() or not path.is_dir():
            continue
        owner = _read_owner(path)
        if owner is None or owner.get("output") != output.name:
            unknown.append(path.name)
            continue
        if may_run(owner):
            continue
        size = _tree_bytes(path)
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed, freed = removed + 1, freed + size
    if removed:
        logger.info(
            "removed %d stale partial folder(s) of '%s' left by killed runs (%s freed)",
            removed,
            output,
            format_bytes(freed),
        )
    if unknown:
        logger.warning(
            "kept %s next to '%s': they look like leftovers of an interrupted merge but carry no owner "
            "record; remove them by hand if no merge is writing '%s'",
            ", ".join(unknown),
            output,
            output,
        )
    return removed, freed


def _read_owner(path: Path) -> dict | None:
    try:
        owner = json.loads((path / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _tree_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


# --- a full disk ---------------------------------------------------------------------------


def format_bytes(size: int) -> str:
    """``2400000`` -> ``2.40 MB`` (decimal units, as disk tools and the Hub show them)."""
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if abs(size) >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size} bytes"


def free_bytes(folder: Path) -> int:
    """Bytes free to this user on the disk of ``folder`` (or of its nearest existing parent)."""
    for path in (folder, *folder.parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(path).free
    return 0


def check_free_space(folder: Path, needed: int, *, what: str, advice: str) -> None:
    """Refuse, before anything is written, ``what`` that needs ``needed`` bytes on ``folder``'s disk.

    Raises:
        DiskFullError: Fewer than ``needed`` bytes are free.
    """
    if needed > 0 and free_bytes(folder) < needed:
        raise _disk_full(what, folder, needed, advice, outcome="nothing was written")


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) reports a full disk or quota."""
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL_ERRNOS:
            return True
        if type(current).__name__ == "OperationalError" and "database or disk is full" in str(current):
            return True  # sqlite's SQLITE_FULL, as sqlite3 and SQLAlchemy report it
        current = current.__cause__ or current.__context__
    return False


@contextlib.contextmanager
def disk_full_errors(what: str, folder: Path, *, outcome: str, advice: str, needed: int | None = None):
    """Turn a full disk met by the block into a :class:`~hf_recycle.errors.DiskFullError`.

    Args:
        what: What was being written, for the message (``"the results of the search in 'out'"``).
        folder: The folder written into; its disk is the one reported.
        outcome: What the failure left (``"nothing was written"``).
        advice: What to do.
        needed: Bytes the whole write needs, when known.
    """
    try:
        yield
    except BaseException as exc:
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise _disk_full(what, folder, needed, advice, outcome=outcome, during=True) from exc
        raise


def raise_if_disk_full(exc: BaseException, what: str, folder: Path, *, outcome: str, advice: str) -> None:
    """Raise a :class:`~hf_recycle.errors.DiskFullError` from ``exc`` if it reports a full disk.

    For an ``except`` clause that then re-raises ``exc`` itself; see :func:`disk_full_errors`.
    """
    if is_disk_full(exc) and not isinstance(exc, DiskFullError):
        raise _disk_full(what, folder, None, advice, outcome=outcome, during=True) from exc


def _disk_full(
    what: str, folder: Path, needed: int | None, advice: str, *, outcome: str, during: bool = False
) -> DiskFullError:
    free = free_bytes(folder)
    head = (
        f"the disk ran out of space while writing {what}" if during else f"not enough disk space for {what}"
    )
    need = f"it needs {format_bytes(needed)} and " if needed else ""
    message = f"{head}: {need}the disk of '{folder}' has {format_bytes(free)} free; {outcome}: {advice}"
    return DiskFullError(message, folder=folder, needed=needed, free=free)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``path`` through a temporary sibling renamed into place: never half a file, no leftover."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
