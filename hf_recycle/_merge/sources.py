"""Checkpoints seen as lazily-read named tensors.

:class:`TensorSource` is the contract every merge input implements (full-weight
safetensors folders here, LoRA adapters in :mod:`hf_recycle._merge.lora`). The engine
and the resident search model read tensors through it one at a time, optionally a
block of rows at a time, so memory never holds a whole checkpoint.

:class:`SafetensorsSource` parses the safetensors headers itself and reads the bytes
of a row block with ``pread`` straight into the caller's buffer: no memory map stays
resident (the page cache is not counted against the process) and no per-tensor copy
is made. :class:`PickleSource` reads ``pytorch_model.bin`` files with
``torch.load(weights_only=True)`` when the user allows it. :class:`TiedHeadSource`
exposes the output head of a checkpoint saved with tied embeddings.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hf_recycle.errors import CheckpointFormatError, CheckpointNotFoundError

logger = logging.getLogger(__name__)

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
SAFETENSORS_DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in SAFETENSORS_DTYPES.items()}


@dataclass(frozen=True)
class LowRankForm:
    """A tensor that is another source's tensor plus a low-rank delta: ``base[key] + u @ v``.

    Attributes:
        base: The source whose tensor of the same name is the starting point.
        u: Float32 ``(rows, r)`` factor (scaling folded in), or ``None`` when the tensor is
            the base's unchanged.
        v: Float32 ``(r, cols)`` factor, or ``None`` with ``u``.
    """

    base: TensorSource
    u: torch.Tensor | None = None
    v: torch.Tensor | None = None


class TensorSource(ABC):
    """A checkpoint as named tensors, read lazily.

    Sources may be read from several threads at once (the streaming engine merges
    blocks of rows in parallel): :meth:`read` and :meth:`read_into` must be safe to call
    concurrently for different keys or rows.

    Attributes:
        name: How the user named this checkpoint (spec or path); used in messages.
        path: The local folder the tensors are read from.
        config: The parsed ``config.json`` of the model this source yields.
        computes_on_device: Whether :meth:`read` computes tensors (LoRA: base + ΔW) and
            should be asked for them on the merge device with ``read(..., device=...)``
            instead of being read into a reused CPU buffer with :meth:`read_into`.
    """

    name: str
    path: Path
    config: dict[str, Any]
    computes_on_device: bool = False

    @abstractmethod
    def keys(self) -> list[str]:
        """Names of the tensors this source yields, in file order."""

    @abstractmethod
    def shape(self, key: str) -> tuple[int, ...]:
        """Shape of tensor ``key`` without reading it."""

    @abstractmethod
    def dtype(self, key: str) -> torch.dtype:
        """Stored dtype of tensor ``key`` without reading it."""

    @abstractmethod
    def read(self, key: str, rows: slice | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        """Tensor ``key`` (only rows ``rows`` of its first dimension when given) on ``device``.

        Full-weight sources return the stored dtype; computed sources (LoRA base + ΔW)
        return float32. The result may share memory with a memory map: do not modify it.
        """

    def read_into(self, key: str, out: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """Read tensor ``key`` (or rows ``rows`` of it) into the CPU tensor ``out``.

        ``out`` must have the shape of the rows read; its dtype may differ from what
        :meth:`read` returns (the values are cast). Sources that can fill a buffer
        without an intermediate copy override this; the streaming engine calls it with
        buffers it reuses for every tensor.

        Returns:
            ``out``.
        """
        out.copy_(self.read(key, rows))
        return out

    def output_dtype(self, key: str) -> torch.dtype:
        """The dtype a merge writes tensor ``key`` in when the output dtype is ``auto``.

        That is :meth:`dtype`, except for computed sources whose :meth:`dtype` is that of
        the computation (LoRA: float32) rather than that of the stored tensor.
        """
        return self.dtype(key)

    def low_rank_form(self, key: str, device: str | torch.device = "cpu") -> LowRankForm | None:
        """Tensor ``key`` as another source's tensor plus a low-rank delta, when it is one.

        Linear merges use it to read a base shared by several inputs once and add all
        their deltas with one matrix product. ``None`` (the default): read it with
        :meth:`read`.
        """
        return None

    def low_rank_width(self, key: str) -> int:
        """Columns of ``U`` in :meth:`low_rank_form` of tensor ``key`` (its rank), from headers only; 0 when none."""
        return 0

    def file_ranges(self, key: str) -> list[tuple[Path, int, int]]:
        """Where the bytes read for tensor ``key`` lie: ``(file, offset, length)`` each.

        A hint for reading ahead (the engine asks the OS to start reading the next tensors
        while it computes); ``[]`` (the default) when the source cannot say.
        """
        return []

    def nbytes(self, key: str) -> int:
        """Bytes tensor ``key`` takes in its stored dtype."""
        numel = 1
        for dim in self.shape(key):
            numel *= dim
        return numel * self.dtype(key).itemsize

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release open files."""

    def __enter__(self) -> TensorSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def read_config(folder: Path, name: str) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint folder.

    Raises:
        CheckpointFormatError: The file is missing or is not a JSON object.
    """
    file = folder / "config.json"
    if not file.is_file():
        raise CheckpointFormatError(
            f"checkpoint '{name}' has no config.json in {folder}: merge inputs must be model folders "
            "saved with save_pretrained (config.json plus model.safetensors)"
        )
    try:
        config = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointFormatError(f"cannot read {file} of checkpoint '{name}': {exc}") from exc
    if not isinstance(config, dict):
        raise CheckpointFormatError(f"{file} of checkpoint '{name}' is not a JSON object")
    return config


@dataclass(frozen=True)
class _TensorLocation:
    file_index: int
    offset: int  # absolute byte offset of the tensor data in the file
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def row_bytes(self) -> int:
        numel = 1
        for dim in self.shape[1:]:
            numel *= dim
        return numel * self.dtype.itemsize


def _parse_safetensors_header(file: Path, name: str) -> tuple[dict[str, Any], int]:
    """``(header, data_start)`` of a safetensors file."""
    try:
        with open(file, "rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                raise ValueError("file is shorter than 8 bytes")
            (length,) = struct.unpack("<Q", head)
            if length > 100_000_000:
                raise ValueError(f"header length {length} is implausible")
            header = json.loads(fh.read(length))
        size = file.stat().st_size
    except (OSError, ValueError) as exc:
        raise CheckpointFormatError(
            f"{file} of checkpoint '{name}' is not a readable safetensors file ({exc}): "
            "re-download or re-save it"
        ) from exc
    data_start = 8 + length
    for key, info in header.items():
        if key == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if data_start + end > size or begin > end:
            raise CheckpointFormatError(
                f"{file} of checkpoint '{name}' is truncated: tensor '{key}' ends past the end of the file"
            )
    return header, data_start


class SafetensorsSource(TensorSource):
    """A checkpoint folder with ``model.safetensors`` or ``model-*-of-*.safetensors`` + index.

    Headers are parsed when the source opens; tensor bytes are read on demand with
    ``os.preadv``, a block of rows at a time if asked.

    Args:
        path: The checkpoint folder.
        name: How the user named it (defaults to the path).
        config: Its parsed ``config.json`` (read from the folder when not given).
    """

    def __init__(
        self, path: str | Path, name: str | None = None, config: dict[str, Any] | None = None
    ) -> None:
        self.path = Path(path)
        self.name = name or str(path)
        files = safetensors_files(self.path, self.name)
        if not files:
            raise CheckpointNotFoundError(
                f"checkpoint '{self.name}' has no safetensors weights in {self.path}: expected "
                "model.safetensors or model-*-of-*.safetensors with model.safetensors.index.json"
            )
        self.config = config if config is not None else read_config(self.path, self.name)
        self.files = files
        self._locations: dict[str, _TensorLocation] = {}
        self.metadata: dict[str, str] = {}
        for index, file in enumerate(files):
            header, data_start = _parse_safetensors_header(file, self.name)
            self.metadata.update(header.pop("__metadata__", None) or {})
            items = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
            for key, info in items:
                dtype = SAFETENSORS_DTYPES.get(info["dtype"])
                if dtype is None:
                    raise CheckpointFormatError(
                        f"tensor '{key}' in {file} has unsupported dtype {info['dtype']}"
                    )
                if key in self._locations:
                    raise CheckpointFormatError(f"tensor '{key}' appears twice in checkpoint '{self.name}'")
                self._locations[key] = _TensorLocation(
                    index, data_start + info["data_offsets"][0], tuple(info["shape"]), dtype
                )
        self._fds: list[int | None] = [None] * len(files)
        self._fd_lock = threading.Lock()

    def keys(self) -> list[str]:
        return list(self._locations)

    def _location(self, key: str) -> _TensorLocation:
        try:
            return self._locations[key]
        except KeyError:
            raise KeyError(f"checkpoint '{self.name}' has no tensor '{key}'") from None

    def shape(self, key: str) -> tuple[int, ...]:
        return self._location(key).shape

    def dtype(self, key: str) -> torch.dtype:
        return self._location(key).dtype

    def _fd(self, index: int) -> int:
        fd = self._fds[index]
        if fd is None:
            with self._fd_lock:  # two threads may ask for the same file first
                fd = self._fds[index]
                if fd is None:
                    fd = self._fds[index] = os.open(self.files[index], os.O_RDONLY)
        return fd

    def _row_span(self, loc: _TensorLocation, rows: slice | None) -> tuple[tuple[int, ...], int]:
        """Shape of the rows read and their byte offset from the tensor start."""
        if rows is None or not loc.shape:
            return loc.shape, 0
        start, stop, step = rows.indices(loc.shape[0])
        if step != 1:
            raise ValueError("rows must be a contiguous slice")
        stop = max(start, stop)
        return (stop - start, *loc.shape[1:]), start * loc.row_bytes

    def file_ranges(self, key: str) -> list[tuple[Path, int, int]]:
        loc = self._location(key)
        return [(self.files[loc.file_index], loc.offset, self.nbytes(key))]

    def read_into(self, key: str, out: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        loc = self._location(key)
        shape, offset = self._row_span(loc, rows)
        if tuple(out.shape) != shape:
            raise ValueError(
                f"buffer of shape {tuple(out.shape)} cannot hold rows of shape {shape} of '{key}'"
            )
        if out.dtype != loc.dtype or not out.is_contiguous() or out.device.type != "cpu":
            out.copy_(self.read(key, rows))
            return out
        nbytes = out.numel() * loc.dtype.itemsize
        if nbytes:
            view = memoryview(out.reshape(-1).view(torch.uint8).numpy())
            fd = self._fd(loc.file_index)
            done = 0
            while done < nbytes:
                got = os.preadv(fd, [view[done:]], loc.offset + offset + done)
                if got <= 0:
                    raise CheckpointFormatError(f"unexpected end of file reading '{key}' of '{self.name}'")
                done += got
        return out

    def read(self, key: str, rows: slice | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        loc = self._location(key)
        shape, _ = self._row_span(loc, rows)
        out = torch.empty(shape, dtype=loc.dtype)
        self.read_into(key, out, rows)
        return out if torch.device(device).type == "cpu" else out.to(device)

    def close(self) -> None:
        for i, fd in enumerate(self._fds):
            if fd is not None:
                os.close(fd)
                self._fds[i] = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


def safetensors_files(folder: Path, name: str) -> list[Path]:
    """The safetensors weight files of a checkpoint folder, index first, sorted otherwise."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointFormatError(
                f"{index} of checkpoint '{name}' is not a valid index: {exc}"
            ) from exc
        files = list(dict.fromkeys(weight_map.values()))
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise CheckpointNotFoundError(
                f"checkpoint '{name}' is incomplete: {index.name} lists {', '.join(missing)}, "
                f"which {'is' if len(missing) == 1 else 'are'} not in {folder}; re-download the checkpoint"
            )
        return [folder / f for f in files]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    return sorted(folder.glob("model-*.safetensors")) or sorted(folder.glob("*.safetensors"))


def pickle_files(folder: Path) -> list[Path]:
    """The ``pytorch_model*.bin`` weight files of a checkpoint folder (index order when sharded)."""
    index = folder / "pytorch_model.bin.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            return [folder / f for f in dict.fromkeys(weight_map.values())]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return sorted(folder.glob("pytorch_model*.bin"))


class PickleSource(TensorSource):
    """A checkpoint stored as ``pytorch_model.bin`` (pickle), loaded with ``weights_only=True``.

    Only constructed when the user allowed pickle inputs. The files are memory-mapped
    (``mmap=True``) so tensors are still read lazily.
    """

    def __init__(
        self, path: str | Path, name: str | None = None, config: dict[str, Any] | None = None
    ) -> None:
        self.path = Path(path)
        self.name = name or str(path)
        self.config = config if config is not None else read_config(self.path, self.name)
        self._tensors: dict[str, torch.Tensor] = {}
        files = pickle_files(self.path)
        if not files:
            raise CheckpointNotFoundError(
                f"checkpoint '{self.name}' has no pytorch_model*.bin in {self.path}"
            )
        for file in files:
            try:
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:
                raise CheckpointFormatError(
                    f"cannot load {file} of checkpoint '{self.name}' with torch.load(weights_only=True): {exc}"
                ) from exc
            if not isinstance(state, dict):
                raise CheckpointFormatError(f"{file} of checkpoint '{self.name}' does not hold a state dict")
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    self._tensors[key] = value

    def keys(self) -> list[str]:
        return list(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._tensors[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        return self._tensors[key].dtype

    def read(self, key: str, rows: slice | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        tensor = self._tensors[key]
        if rows is not None and tensor.dim() > 0:
            tensor = tensor[rows]
        return tensor.to(device)

    def close(self) -> None:
        self._tensors.clear()


class TiedHeadSource(TensorSource):
    """A checkpoint saved with tied embeddings, with its output head made explicit.

    Used when tied and untied checkpoints are merged together: the tied ones have no
    ``head_key`` on disk, and their effective head is the input embedding ``embed_key``.

    Args:
        inner: The tied checkpoint.
        head_key: Name of the output head tensor (``lm_head.weight``).
        embed_key: Name of the input embedding it is tied to.
    """

    def __init__(self, inner: TensorSource, head_key: str, embed_key: str) -> None:
        self.inner = inner
        self.head_key = head_key
        self.embed_key = embed_key
        self.name = inner.name
        self.path = inner.path
        self.config = {**inner.config, "tie_word_embeddings": False}
        self.computes_on_device = inner.computes_on_device

    def _resolve(self, key: str) -> str:
        return self.embed_key if key == self.head_key else key

    def keys(self) -> list[str]:
        keys = self.inner.keys()
        return keys if self.head_key in keys else [*keys, self.head_key]

    def shape(self, key: str) -> tuple[int, ...]:
        return self.inner.shape(self._resolve(key))

    def dtype(self, key: str) -> torch.dtype:
        return self.inner.dtype(self._resolve(key))

    def output_dtype(self, key: str) -> torch.dtype:
        return self.inner.output_dtype(self._resolve(key))

    def read(self, key: str, rows: slice | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        return self.inner.read(self._resolve(key), rows, device)

    def read_into(self, key: str, out: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        return self.inner.read_into(self._resolve(key), out, rows)

    def low_rank_width(self, key: str) -> int:
        return self.inner.low_rank_width(self._resolve(key))

    def file_ranges(self, key: str) -> list[tuple[Path, int, int]]:
        return self.inner.file_ranges(self._resolve(key))

    def close(self) -> None:
        self.inner.close()
