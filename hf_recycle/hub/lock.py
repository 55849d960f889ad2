"""``checkpoints.lock.json``: the pins of every checkpoint an output was made from."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hf_recycle.errors import CheckpointFormatError
from hf_recycle.hub.pins import PinnedCheckpoint
from hf_recycle.outputs import write_text_atomic

logger = logging.getLogger(__name__)

LOCK_FILENAME = "checkpoints.lock.json"
LOCK_FORMAT = 1


def write_lock(
    pins: Iterable[PinnedCheckpoint], folder: str | Path, *, base: PinnedCheckpoint | None = None
) -> Path:
    """Write ``folder/checkpoints.lock.json`` listing ``pins`` in order.

    The file holds ``{"format": 1, "hf_recycle_version": ..., "created": ...,
    "checkpoints": [{"spec": ..., "repo_id": ..., "revision": ..., "commit": ...,
    "subfolder": ..., "kind": ...}, ...]}``. Tokens are never written.

    Args:
        pins: The pinned checkpoints, in the order the output used them.
        folder: The output folder; created if missing.
        base: The base checkpoint of the merge, if any (written under ``"base"``).

    Returns:
        The path of the lock file.
    """
    from hf_recycle._version import __version__

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "format": LOCK_FORMAT,
        "hf_recycle_version": __version__,
        "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "checkpoints": [{"spec": pin.spec, **pin.to_json()} for pin in pins],
        "base": {"spec": base.spec, **base.to_json()} if base is not None else None,
    }
    path = folder / LOCK_FILENAME
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")  # never half a file, even on a full disk
    logger.debug("wrote %s (%d checkpoints)", path, len(data["checkpoints"]))
    return path


def read_lock(path: str | Path) -> list[PinnedCheckpoint]:
    """Read the checkpoint pins of a lock file (or of ``path/checkpoints.lock.json`` for a folder).

    The base, if any, is not included; see :func:`read_lock_base`.

    Raises:
        CheckpointFormatError: The file is missing, not JSON, or not a lock file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / LOCK_FILENAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = data["checkpoints"]
        return [PinnedCheckpoint.from_json(entry, spec=entry.get("spec")) for entry in entries]
    except FileNotFoundError as exc:
        raise CheckpointFormatError(f"lock file '{path}' does not exist") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointFormatError(
            f"'{path}' is not a valid {LOCK_FILENAME}: {exc}; regenerate it with hf-recycle resolve"
        ) from exc


def read_lock_base(path: str | Path) -> PinnedCheckpoint | None:
    """The base checkpoint pin of a lock file, or ``None`` when the output had no base."""
    path = Path(path)
    if path.is_dir():
        path = path / LOCK_FILENAME
    read_lock(path)  # validates
    base = json.loads(path.read_text(encoding="utf-8")).get("base")
    return PinnedCheckpoint.from_json(base, spec=base.get("spec")) if base else None
