"""The pinned checkpoint: one spec resolved to an immutable place (repo, commit sha, subfolder)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

CheckpointKind = Literal["full", "lora"]


@dataclass(frozen=True)
class PinnedCheckpoint:
    """One checkpoint, pinned to a commit sha (Hub) or a folder (local).

    Attributes:
        repo_id: Hub repository id (``org/name``); ``None`` for a local folder.
        revision: Branch, tag or sha as the spec named or expanded it (``step-10``).
        commit: 40-hex commit sha the revision pointed to; ``None`` for a local folder.
        subfolder: Folder inside the repo (``checkpoint-500``); ``None`` at the root.
        kind: ``"full"`` for complete weights, ``"lora"`` for a PEFT adapter.
        spec: The expanded spec, e.g. ``"org/run@step-10"`` or ``"org/run@main:checkpoint-5"``.
        local_path: Absolute folder of a local checkpoint; ``None`` for a Hub checkpoint.
    """

    repo_id: str | None
    revision: str | None
    commit: str | None
    subfolder: str | None
    kind: CheckpointKind
    spec: str
    local_path: str | None = None

    @property
    def is_local(self) -> bool:
        """Whether this checkpoint is a local folder rather than a Hub revision."""
        return self.repo_id is None

    @property
    def display(self) -> str:
        """Short human-readable form: ``org/run@step-10 (1a2b3c4)`` or the local path."""
        if self.is_local:
            return str(self.local_path or self.spec)
        text = f"{self.repo_id}@{self.revision}"
        if self.subfolder:
            text += f":{self.subfolder}"
        if self.commit and self.revision != self.commit:
            text += f" ({self.commit[:7]})"
        return text

    def to_json(self) -> dict[str, Any]:
        """The stable JSON form used by ``hf-recycle resolve --json`` and the lock file.

        Keys: ``repo_id``, ``revision``, ``commit``, ``subfolder`` (``None`` at the root),
        ``kind``, and ``path`` for a local folder.
        """
        data: dict[str, Any] = {
            "repo_id": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
            "subfolder": self.subfolder,
            "kind": self.kind,
        }
        if self.is_local:
            data["path"] = self.local_path
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], spec: str | None = None) -> PinnedCheckpoint:
        """Rebuild a pin from :meth:`to_json` output (as read from a lock file)."""
        repo_id = data.get("repo_id")
        if spec is None:
            spec = data.get("spec") or _spec_of(
                repo_id, data.get("revision"), data.get("subfolder"), data.get("path")
            )
        return cls(
            repo_id=repo_id,
            revision=data.get("revision"),
            commit=data.get("commit"),
            subfolder=data.get("subfolder"),
            kind=data.get("kind", "full"),
            spec=spec,
            local_path=data.get("path"),
        )

    def pinned_spec(self) -> str:
        """A spec that resolves to exactly this checkpoint again (``org/run@<sha>:sub``)."""
        if self.is_local:
            return str(self.local_path or self.spec)
        return _spec_of(self.repo_id, self.commit or self.revision, self.subfolder, None)


def _spec_of(repo_id: str | None, revision: str | None, subfolder: str | None, path: str | None) -> str:
    if repo_id is None:
        return str(path)
    spec = repo_id if revision is None else f"{repo_id}@{revision}"
    return f"{spec}:{subfolder}" if subfolder else spec


@dataclass(frozen=True)
class Fetched:
    """A checkpoint resolved and on this machine: its pin and its local folder.

    Anything that takes a checkpoint spec (``merge``, ``open_inputs``) takes one and
    neither resolves nor downloads it again.

    Attributes:
        pin: The pinned checkpoint (what lock files and cards record).
        path: Its local folder (the Hub cache's snapshot folder, or the local folder itself).
    """

    pin: PinnedCheckpoint
    path: Path

    @property
    def spec(self) -> str:
        """The expanded spec (:attr:`PinnedCheckpoint.spec`)."""
        return self.pin.spec
