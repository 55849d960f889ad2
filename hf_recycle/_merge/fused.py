"""Weighted sums of K low-precision rows in one compiled pass, for searches over big pools.

A linear candidate is Σ cᵢ·xᵢ over K bfloat16 (or float16) copies of each tensor, summed in
float32. Eager torch needs a pass per row (convert row i, add it into float32 partial sums),
each reading and writing the partial sums again: on a 2-core CPU 52-58 ms per GB of rows,
where one read of the rows takes about 20. ``torch.compile`` (inductor) turns the sum into
one loop that reads each row element once and keeps the sum in registers: 23-25 ms per GB,
the same results within one rounding step of the output dtype (the order of the float32
additions differs; see ``benchmarks/RESULTS.md``).

Compiling costs seconds once per process (2-9 s on that machine; torch's on-disk cache
makes later processes faster) and needs a C++ compiler, so a search compiles only when one
trial sums at least :data:`COMPILE_MIN_BYTES` of such rows, where the time saved over a
few dozen trials pays for it. ``HF_RECYCLE_COMPILE`` overrides that: ``auto`` (the default),
``1`` (always) or ``0`` (never). Where compiling fails (no compiler, an unsupported
platform) the sum falls back to eager torch for the rest of the process, with one warning.

One compiled function per K (its own code object, so that the recompile limit of torch's
compiler counts per K): the rows are passed as K separate 1-D tensors, detached, and marked
dynamic in their length, which makes one graph serve every tensor size and storage offset.
"""

from __future__ import annotations

import logging
import os
import threading
import types
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from hf_recycle.errors import MergeConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

#: The environment variable that overrides when the weighted sum is compiled.
COMPILE_ENV = "HF_RECYCLE_COMPILE"
#: Bytes of low-precision rows summed per trial from which a search compiles the sum.
COMPILE_MIN_BYTES = 4 * 10**9
#: Shorter rows are summed eagerly (the compiled call's overhead, ~20 µs, would dominate).
MIN_ELEMENTS = 1 << 12

_lock = threading.Lock()
_compiled: dict[int, Callable[..., None]] = {}
_failed = False


def compile_setting() -> str:
    """``auto``, ``always`` or ``never``, from ``HF_RECYCLE_COMPILE`` (unset: ``auto``)."""
    value = os.environ.get(COMPILE_ENV, "auto").strip().lower()
    if value in ("", "auto"):
        return "auto"
    if value in ("1", "true", "yes", "on", "always"):
        return "always"
    if value in ("0", "false", "no", "off", "never"):
        return "never"
    raise MergeConfigError(
        f"{COMPILE_ENV}={os.environ[COMPILE_ENV]!r} is not a setting: use auto (compile the "
        "candidate's weighted sum for pools of gigabytes), 1 (always) or 0 (never)"
    )


def wanted(row_bytes: int) -> bool:
    """Whether a search that sums ``row_bytes`` of low-precision rows per trial compiles the sum."""
    setting = compile_setting()
    if setting == "auto":
        return row_bytes >= COMPILE_MIN_BYTES
    return setting == "always"


def weighted_sum(out: torch.Tensor, rows: Sequence[torch.Tensor], weights: torch.Tensor) -> bool:
    """``out`` = Σ ``weights[i]``·``rows[i]``, summed in float32, in one compiled pass.

    Args:
        out: A 1-D CPU tensor (float32, bfloat16 or float16) the sum is cast into.
        rows: K 1-D contiguous CPU tensors of ``out``'s length, all bfloat16 or all float16.
        weights: A float32 CPU tensor of K coefficients.

    Returns:
        ``False`` (nothing written) where the compiled sum does not apply: other dtypes or
        devices, short rows, or compiling failed; the caller then sums eagerly.
    """
    import torch

    global _failed
    n = out.numel()
    low = (torch.bfloat16, torch.float16)
    if (
        _failed
        or not rows
        or n < MIN_ELEMENTS
        or weights.dtype != torch.float32
        or out.dtype not in (torch.float32, *low)
        or rows[0].dtype not in low
        or any(not _plain(t, n, rows[0].dtype) for t in rows)
        or not _plain(out, n, out.dtype)
    ):
        return False
    try:
        fn = _function(len(rows))
        target = out.detach()
        parts = [r.detach() for r in rows]
        for t in (target, *parts):
            torch._dynamo.mark_dynamic(t, 0)
        fn(target, parts, weights.detach())
    except Exception as err:  # compiling failed: sum eagerly from now on
        with _lock:
            first = not _failed
            _failed = True
        if first:
            logger.warning(
                "compiling the candidates' weighted sum failed (%s: %s); summing eagerly, about "
                "twice as slow for low-precision pools. Set %s=0 to skip compiling.",
                type(err).__name__,
                str(err).splitlines()[0] if str(err) else "",
                COMPILE_ENV,
            )
        return False
    return True


def _plain(t: torch.Tensor, n: int, dtype: torch.dtype) -> bool:
    """A 1-D contiguous CPU tensor of ``n`` elements of ``dtype``."""
    return (
        t.dtype == dtype and t.device.type == "cpu" and t.dim() == 1 and t.numel() == n and t.is_contiguous()
    )


def _sum_rows(out, rows, weights):  # the body torch.compile fuses (K is the list's length)
    acc = rows[0].float() * weights[0]
    for i in range(1, len(rows)):
        acc = acc + rows[i].float() * weights[i]
    out.copy_(acc)


def _function(k: int) -> Callable[..., None]:
    """The compiled sum of ``k`` rows (a code object of its own per ``k``)."""
    fn = _compiled.get(k)
    if fn is not None:
        return fn
    with _lock:
        fn = _compiled.get(k)
        if fn is None:
            import torch

            name = f"_sum_{k}_rows"
            body = types.FunctionType(_sum_rows.__code__.replace(co_name=name), _sum_rows.__globals__, name)
            # compile_threads=1: no pool of compiler processes (one small graph, nothing left running)
            options = {"compile_threads": 1}
            fn = _compiled[k] = torch.compile(body, dynamic=None, fullgraph=True, options=options)
        return fn
