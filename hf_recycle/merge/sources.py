"""Checkpoints seen as lazily-read named tensors.

:class:`TensorSource` is the contract every merge input implements (full-weight
safetensors folders here, LoRA adapters in :mod:`hf_recycle.merge.lora`). The engine
and the resident search model read tensors through it one at a time, optionally a
block of rows at a time, so memory never holds a whole checkpoint.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch


class TensorSource(ABC):
    """A checkpoint as named tensors, read lazily.

    Attributes:
        name: How the user named this checkpoint (spec or path); used in messages.
        path: The local folder the tensors are read from.
        config: The parsed ``config.json`` of the model this source yields.
    """

    name: str
    path: Path
    config: dict[str, Any]

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

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release open files."""

    def __enter__(self) -> TensorSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
