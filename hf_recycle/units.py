"""Small parsers shared by every stage: byte sizes and dtype names (no heavy imports)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from hf_recycle.errors import MergeConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
_SIZE_UNITS = {
    "": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}
SIZE_UNITS_TEXT = "KB, MB, GB, TB, KiB, MiB, GiB, TiB, or a plain byte count"

DTYPE_NAMES = ("float32", "bfloat16", "float16")


def parse_size(value: str | int, what: str = "max_shard_size") -> int:
    """Parse ``"5GB"``, ``"500MB"``, ``"2GiB"`` or a plain byte count into bytes.

    A bare ``B`` suffix (``"5B"``) is refused: mergekit reads ``5B`` as five billion
    parameters, bytes would make it 5 bytes (a shard per tensor).

    Raises:
        MergeConfigError: Not a size, a bare ``B`` suffix, or not positive.
    """
    if isinstance(value, bool):
        raise MergeConfigError(f"{what} '{value}' is not a size: write it like 5GB, 500MB or 2GiB")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE_RE.match(str(value))
        unit = match.group(2).upper() if match else None
        if unit == "B":
            raise MergeConfigError(
                f"{what} '{value}' ends in a bare B: mergekit reads 5B as 5 billion parameters, as bytes it "
                f"would be 5; write the size with a byte unit, e.g. 5GB (accepted: {SIZE_UNITS_TEXT})"
            )
        if not match or unit not in _SIZE_UNITS:
            raise MergeConfigError(
                f"{what} '{value}' is not a size: write it like 5GB, 500MB or 2GiB (accepted: {SIZE_UNITS_TEXT})"
            )
        size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if size <= 0:
        raise MergeConfigError(f"{what} must be positive, got '{value}'")
    return size


def torch_dtype(name: str) -> torch.dtype:
    """Map ``float32``/``bfloat16``/``float16`` (and ``fp32``/``bf16``/``fp16``) to a torch dtype."""
    import torch

    aliases = {
        "fp32": "float32",
        "bf16": "bfloat16",
        "fp16": "float16",
        "float": "float32",
        "half": "float16",
    }
    name = aliases.get(name, name)
    if name not in DTYPE_NAMES:
        raise MergeConfigError(f"dtype '{name}' is not supported: use one of {', '.join(DTYPE_NAMES)}")
    return getattr(torch, name)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")
