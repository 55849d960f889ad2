"""Size-capped safetensors shards, written block by block, index written at the end.

Every tensor's name, shape and dtype are known before a merge computes anything, so
:class:`ShardedSafetensorsWriter` plans the shards up front, writes each shard's
header, and then places each block of rows at its final offset with ``pwrite``: no
output tensor (let alone a whole shard) has to sit in memory. Files are named like
``save_pretrained`` names them (``model.safetensors``, or ``model-00001-of-00003.safetensors``
plus ``model.safetensors.index.json``) and carry the metadata ``{"format": "pt"}``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from hf_recycle._merge.sources import SAFETENSORS_DTYPE_NAMES

logger = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorEntry:
    """A tensor to be written: name, shape, dtype."""

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        n = 1
        for dim in self.shape:
            n *= dim
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


@dataclass
class _Shard:
    file: str
    entries: list[TensorEntry]
    data_start: int = 0
    fd: int | None = None


class ShardedSafetensorsWriter:
    """Writes planned tensors into shards of at most ``max_shard_size`` bytes.

    A tensor larger than the cap gets a shard of its own. Call :meth:`write` for every
    block of every tensor (any order, from any number of threads), then :meth:`close`,
    which checks that every byte was written and writes the index when there is more
    than one shard.

    Args:
        folder: Existing folder to write into.
        entries: Every tensor, in the order they should appear.
        max_shard_size: Cap on the tensor bytes of one shard.
    """

    def __init__(self, folder: str | Path, entries: Sequence[TensorEntry], max_shard_size: int) -> None:
        self.folder = Path(folder)
        groups: list[list[TensorEntry]] = [[]]
        size = 0
        for entry in entries:
            if groups[-1] and size + entry.nbytes > max_shard_size:
                groups.append([])
                size = 0
            groups[-1].append(entry)
            size += entry.nbytes
        total = len(groups)
        names = (
            [SINGLE_FILE]
            if total == 1
            else [f"model-{i:05d}-of-{total:05d}.safetensors" for i in range(1, total + 1)]
        )
        self.shards = [_Shard(name, group) for name, group in zip(names, groups, strict=True)]
        self._where: dict[str, tuple[_Shard, int, TensorEntry]] = {}
        for shard in self.shards:
            offset = 0
            for entry in shard.entries:
                if entry.key in self._where:
                    raise ValueError(f"tensor '{entry.key}' planned twice")
                self._where[entry.key] = (shard, offset, entry)
                offset += entry.nbytes
        self._written: dict[str, int] = dict.fromkeys(self._where, 0)
        self.total_bytes = sum(e.nbytes for e in entries)
        self._lock = threading.Lock()  # opening shards and counting bytes; pwrite needs none

    @property
    def files(self) -> list[str]:
        """File names of the shards (plus the index when sharded)."""
        names = [s.file for s in self.shards]
        return names if len(names) == 1 else [*names, INDEX_FILE]

    def _open(self, shard: _Shard) -> int:
        if shard.fd is not None:
            return shard.fd
        with self._lock:
            if shard.fd is None:
                self._create(shard)
        assert shard.fd is not None
        return shard.fd

    def _create(self, shard: _Shard) -> None:
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for entry in shard.entries:
            header[entry.key] = {
                "dtype": SAFETENSORS_DTYPE_NAMES[entry.dtype],
                "shape": list(entry.shape),
                "data_offsets": [offset, offset + entry.nbytes],
            }
            offset += entry.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        fd = os.open(self.folder / shard.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        _pwrite_all(fd, len(raw).to_bytes(8, "little") + raw, 0)
        shard.data_start = 8 + len(raw)
        os.ftruncate(fd, shard.data_start + offset)
        shard.fd = fd

    def write(self, key: str, data: torch.Tensor, row_start: int = 0) -> None:
        """Write ``data`` (the whole tensor, or rows from ``row_start`` on) of tensor ``key``."""
        shard, offset, entry = self._where[key]
        if data.dtype != entry.dtype:
            raise ValueError(f"tensor '{key}' is planned as {entry.dtype}, got {data.dtype}")
        row_bytes = entry.nbytes // entry.shape[0] if entry.shape and entry.shape[0] else 0
        position = offset + row_start * row_bytes
        nbytes = data.numel() * data.dtype.itemsize
        if position + nbytes > offset + entry.nbytes:
            raise ValueError(f"rows written past the end of tensor '{key}'")
        fd = self._open(shard)
        if nbytes:
            data = data.detach().to("cpu").contiguous().reshape(-1)
            _pwrite_all(fd, memoryview(data.view(torch.uint8).numpy()), shard.data_start + position)
        with self._lock:
            self._written[key] += nbytes

    def close(self) -> list[str]:
        """Finish every shard, write the index if sharded, and return the file names."""
        incomplete = [k for k, (_, _, e) in self._where.items() if self._written[k] != e.nbytes]
        for shard in self.shards:
            self._open(shard)  # shards of empty tensors still need a header
            os.close(shard.fd)  # type: ignore[arg-type]
            shard.fd = None
        if incomplete:
            raise RuntimeError(f"{len(incomplete)} tensors were not fully written, first: {incomplete[0]}")
        if len(self.shards) > 1:
            index = {
                "metadata": {"total_size": self.total_bytes},
                "weight_map": {e.key: s.file for s in self.shards for e in s.entries},
            }
            (self.folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        return self.files

    def abort(self) -> None:
        """Close open files without checking anything (the caller discards the folder)."""
        for shard in self.shards:
            if shard.fd is not None:
                os.close(shard.fd)
                shard.fd = None


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def write_state_dict(
    folder: str | Path, tensors: Mapping[str, torch.Tensor], max_shard_size: int
) -> list[str]:
    """Write in-memory ``tensors`` as size-capped shards (plus index) into ``folder``.

    Returns:
        The file names written.
    """
    writer = ShardedSafetensorsWriter(
        folder, [TensorEntry(k, tuple(v.shape), v.dtype) for k, v in tensors.items()], max_shard_size
    )
    try:
        for key, value in tensors.items():
            writer.write(key, value)
        return writer.close()
    except BaseException:
        writer.abort()
        raise
