"""Sparsification of task vectors: TIES magnitude thresholds and seeded DARE masks."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from hf_recycle._merge.methods._base import KeepThreshold

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Elements per block of the DARE mask stream (fixed: changing it changes every mask).
DARE_BLOCK = 1 << 20


def stable_seed(seed: int, key: str, index: int, block: int) -> int:
    """A 63-bit seed from (seed, tensor name, input index, block), stable across runs and platforms."""
    digest = hashlib.blake2b(f"{seed}\0{key}\0{index}\0{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def dare_keep_mask(
    seed: int, key: str, index: int, numel: int, start: int, count: int, density: float
) -> torch.Tensor:
    """Flat boolean DARE mask of elements ``[start, start + count)`` of a tensor of ``numel`` elements.

    Drawn on the CPU, block by block, so any slicing of the tensor sees the same mask.
    """
    import torch

    parts = []
    pos = start
    end = start + count
    while pos < end:
        block = pos // DARE_BLOCK
        block_start = block * DARE_BLOCK
        block_len = min(DARE_BLOCK, numel - block_start)
        gen = torch.Generator().manual_seed(stable_seed(seed, key, index, block))
        draws = torch.rand(block_len, generator=gen)
        stop = min(end, block_start + block_len)
        parts.append(draws[pos - block_start : stop - block_start] < density)
        pos = stop
    return torch.cat(parts) if len(parts) != 1 else parts[0]


def magnitude_threshold(abs_delta: torch.Tensor, density: float) -> KeepThreshold | None:
    """The TIES keep rule for one whole task vector given its absolute values.

    Keeps exactly k = max(1, ⌊density·numel⌋) entries: all above the k-th largest value,
    and as many of those equal to it as needed, first in flat order.
    """
    import torch

    flat = abs_delta.reshape(-1)
    numel = flat.numel()
    if density >= 1 or numel == 0:
        return None
    k = max(1, int(density * numel))
    if k >= numel:
        return None
    value = torch.kthvalue(flat.float().cpu() if flat.device.type != "cpu" else flat, numel - k + 1).values
    value_f = float(value)
    need = k - int((flat > value_f).sum())
    step = 1 << 22
    seen = 0
    for begin in range(0, numel, step):
        block = flat[begin : begin + step] == value_f
        count = int(block.sum())
        if seen + count >= need:
            idx = torch.nonzero(block).reshape(-1)[need - seen - 1]
            return KeepThreshold(value_f, begin + int(idx))
        seen += count
    raise AssertionError("k-th value not found")  # pragma: no cover


def apply_threshold(delta: torch.Tensor, thr: KeepThreshold | None, offset: int) -> None:
    """Zero, in place, the entries of a (block of a) task vector that TIES drops."""
    import torch

    if thr is None:
        return
    flat = delta.reshape(-1)
    mag = flat.abs()
    n = flat.numel()
    cut = thr.last_tie - offset + 1  # entries [0, cut) may keep ties
    if cut <= 0:
        keep = mag > thr.value
    elif cut >= n:
        keep = mag >= thr.value
    else:
        keep = torch.empty(n, dtype=torch.bool, device=flat.device)
        torch.ge(mag[:cut], thr.value, out=keep[:cut])
        torch.gt(mag[cut:], thr.value, out=keep[cut:])
    flat.mul_(keep)
