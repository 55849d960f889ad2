"""Weighted sums of K low-precision rows in one native pass, for big pools and big merges.

A linear merge or candidate is Σ cᵢ·xᵢ over K bfloat16 (or float16) copies of each tensor,
summed in float32. Eager torch needs a pass per row (convert row i, add it into the float32
partial sums), and its mixed-dtype add runs at 80-90 ms per GB of rows on one core of a
2-core CPU. The small C kernel below reads all K rows at once, a vector of the CPU's widest
registers at a time (16 float32 lanes with AVX-512, 8 with AVX2) while asking for the bytes
2 KB ahead, converts and adds them into float32 sums held in registers, and casts the sums
to the output dtype in the same pass: about 30 ms per GB from the cache, 35-45 from RAM on
one core, 23-29 on two. It is the eager arithmetic in the same order (x₀·w₀, a fused
multiply-add per further row, then the division by the total weight), so the results are
bit for bit those of eager torch (the tests check it). CPUs without fused multiply-add
instructions get no kernel (eager torch is as fast there).

It is compiled once per process with the system's C compiler (``$CC``, else ``cc``,
``gcc`` or ``clang``; a quarter of a second) into a private temporary folder that is
removed once the library is loaded, and called through :mod:`ctypes`, which releases the
GIL: the merge engine's worker threads sum their blocks in parallel, and a whole tensor
is split over torch's threads. A caller compiles only when it sums at least
:data:`COMPILE_MIN_BYTES` per search trial (:data:`MERGE_COMPILE_MIN_BYTES` in one merge,
which pays for the compiling alone). ``HF_RECYCLE_COMPILE``
overrides that: ``auto`` (the default), ``1`` (always) or ``0`` (never). Where compiling
fails (no compiler, an unsupported platform) the sums stay eager for the rest of the
process, with one warning.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from hf_recycle.errors import MergeConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

#: The environment variable that overrides when the weighted sum is compiled.
COMPILE_ENV = "HF_RECYCLE_COMPILE"
#: Bytes of low-precision rows a search trial sums from which the native sum is compiled: a
#: quarter second of compiling, paid once, against about 50 ms saved per GB in every trial.
COMPILE_MIN_BYTES = 10**9
#: The same for one merge, which pays for the compiling once: from about 5 GB it saves more.
MERGE_COMPILE_MIN_BYTES = 5 * 10**9
#: Shorter rows are summed eagerly (a call costs a few microseconds).
MIN_ELEMENTS = 1 << 12
#: A long sum is cut into pieces of this many elements, which several threads take in turn
#: (halves of a row, one per thread, were up to twice as slow: the threads' streams through
#: memory then start a multiple of a megabyte apart).
CHUNK_ELEMENTS = 1 << 18

# One function per input and output dtype: ``int64_t f(rows, weights, k, n, divisor, out)``
# writes Σ weights[i]·rows[i] (÷ divisor) into ``out`` two vectors per step, all K rows read
# in the same step, and returns 1 where ``out`` holds a NaN or an infinity. Compiled with
# -ffp-contract=off: the only fused multiply-adds are the explicit ones, as in eager torch.
_SOURCE = r"""
#include <stdint.h>
#include <string.h>
/* V float32 lanes per vector: the widest registers the target has */
#if defined(__AVX512F__)
#define V 16
#elif defined(__AVX__)
#define V 8
#else
#define V 4
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
typedef float vf __attribute__((vector_size(V * 4)));
typedef uint32_t vu __attribute__((vector_size(V * 4)));
typedef int32_t vi __attribute__((vector_size(V * 4)));
typedef uint16_t vh __attribute__((vector_size(V * 2)));

/* acc + x*w with one rounding (a fused multiply-add, as eager torch's kernels do)
   (no kernel on CPUs without one: there, eager torch is as fast) */
#if V == 16
#define HAVE_FMA 1
static inline vf madd(vf acc, vf x, float w) { return (vf)_mm512_fmadd_ps((__m512)x, _mm512_set1_ps(w), (__m512)acc); }
#elif V == 8 && defined(__FMA__)
#define HAVE_FMA 1
static inline vf madd(vf acc, vf x, float w) { return (vf)_mm256_fmadd_ps((__m256)x, _mm256_set1_ps(w), (__m256)acc); }
#elif defined(__aarch64__)
#define HAVE_FMA 1
#include <arm_neon.h>
static inline vf madd(vf acc, vf x, float w) { return (vf)vfmaq_n_f32((float32x4_t)acc, (float32x4_t)x, w); }
#endif

/* bfloat16: the high half of a float32; to bfloat16 rounds to nearest even, NaN to 0x7fc0 */
static inline vf load_bf16(const uint16_t *p) {
    vh h; memcpy(&h, p, sizeof h);
    return (vf)(__builtin_convertvector(h, vu) << 16);
}
static inline float sload_bf16(const uint16_t *p) { uint32_t u = (uint32_t)*p << 16; float f; memcpy(&f, &u, 4); return f; }
static inline vi store_bf16(uint16_t *o, vf acc) {
    vu u = (vu)acc;
    vu r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    vi nan = (vi)((u & 0x7fffffffu) > 0x7f800000u);
    r = (vu)(((vi)r & ~nan) | (0x7fc0 & nan));
    vh h = __builtin_convertvector(r, vh);
    memcpy(o, &h, sizeof h);
    return (vi)((r & 0x7f80u) == 0x7f80u);
}
static inline int sstore_bf16(uint16_t *o, float f) {
    uint32_t u; memcpy(&u, &f, 4);
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    r = (u & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : r;
    *o = (uint16_t)r;
    return (r & 0x7f80u) == 0x7f80u;
}
/* float32 out: the non-finite values have every exponent bit set */
static inline vi store_f32(float *o, vf acc) {
    memcpy(o, &acc, sizeof acc);
    return (vi)(((vu)acc & 0x7f800000u) == 0x7f800000u);
}
static inline int sstore_f32(float *o, float f) {
    uint32_t u; memcpy(&u, &f, 4); *o = f;
    return (u & 0x7f800000u) == 0x7f800000u;
}
#if defined(__F16C__) && (V == 16 || V == 8)
/* float16 through the CPU's conversion instructions (F16C), which round to nearest even */
#define HAVE_F16 1
static inline vf load_f16(const uint16_t *p) {
#if V == 16
    return (vf)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
#else
    return (vf)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
#endif
}
static inline float sload_f16(const uint16_t *p) { return _cvtsh_ss(*p); }
static inline vi store_f16(uint16_t *o, vf acc) {
#if V == 16
    _mm256_storeu_si256((__m256i *)o, _mm512_cvtps_ph((__m512)acc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#else
    _mm_storeu_si128((__m128i *)o, _mm256_cvtps_ph((__m256)acc, _MM_FROUND_TO_NEAREST_INT));
#endif
    vh bits;
    memcpy(&bits, o, sizeof bits);
    return __builtin_convertvector((bits & 0x7c00) == 0x7c00, vi);
}
static inline int sstore_f16(uint16_t *o, float f) {
    *o = _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
    return (*o & 0x7c00) == 0x7c00;
}
#endif

/* elements read ahead of the sums, one cache line per row and step: with K rows at once the
   CPU's own prefetchers fall behind (rows a power of two of bytes apart were 1.5x slower) */
#define AHEAD 1024

/* out = sum_i w[i] * rows[i] (/ divisor), in float32 in the order of eager torch: x0*w0, then
   one fused multiply-add per row, then the division; returns 1 when out holds NaN or Inf. */
/* the sum of elements [start, stop) of the rows; 1 where the output holds NaN or Inf */
#define WSUM(IN, IN_T, OUT, OUT_T)                                                              \
static int64_t range_##IN##_##OUT(const IN_T *const *rows, const float *w, int64_t k,          \
                                  int64_t start, int64_t stop, float divisor, OUT_T *out) {     \
    vi bad = {0};                                                                               \
    int64_t j = start;                                                                          \
    for (; j + 2 * V <= stop; j += 2 * V) {                                                     \
        __builtin_prefetch(rows[0] + j + AHEAD);                                                \
        vf a0 = load_##IN(rows[0] + j) * w[0];                                                  \
        vf a1 = load_##IN(rows[0] + j + V) * w[0];                                              \
        _Pragma("GCC unroll 4")  /* four rows per turn of the loop */                           \
        for (int64_t i = 1; i < k; i++) {                                                       \
            __builtin_prefetch(rows[i] + j + AHEAD);                                            \
            a0 = madd(a0, load_##IN(rows[i] + j), w[i]);                                        \
            a1 = madd(a1, load_##IN(rows[i] + j + V), w[i]);                                    \
        }                                                                                       \
        if (divisor != 1.0f) { a0 /= divisor; a1 /= divisor; }                                  \
        bad |= store_##OUT(out + j, a0);                                                        \
        bad |= store_##OUT(out + j + V, a1);                                                    \
    }                                                                                           \
    int64_t any = 0;                                                                            \
    for (; j < stop; j++) {                                                                     \
        float a = sload_##IN(rows[0] + j) * w[0];                                               \
        for (int64_t i = 1; i < k; i++) a = __builtin_fmaf(sload_##IN(rows[i] + j), w[i], a);   \
        if (divisor != 1.0f) a /= divisor;                                                      \
        any |= sstore_##OUT(out + j, a);                                                        \
    }                                                                                           \
    for (int q = 0; q < V; q++) any |= bad[q] != 0;                                             \
    return any;                                                                                 \
}                                                                                               \
/* pieces first, first + stride, ... of `piece` elements each (one thread's share of a sum) */  \
int64_t hfr_wsum_##IN##_##OUT(const void *const *rows, const float *w, int64_t k, int64_t n,   \
                              float divisor, void *out, int64_t piece, int64_t first,           \
                              int64_t stride) {                                                 \
    int64_t any = 0;                                                                            \
    for (int64_t s = first * piece; s < n; s += stride * piece)                                 \
        any |= range_##IN##_##OUT((const IN_T *const *)rows, w, k, s,                           \
                                  s + piece < n ? s + piece : n, divisor, (OUT_T *)out);        \
    return any;                                                                                 \
}

#ifdef HAVE_FMA
WSUM(bf16, uint16_t, f32, float)
WSUM(bf16, uint16_t, bf16, uint16_t)
#endif
#if defined(HAVE_FMA) && defined(HAVE_F16)
WSUM(f16, uint16_t, f32, float)
WSUM(f16, uint16_t, f16, uint16_t)
#endif
"""

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_failed = False
_pool: tuple[int, int, ThreadPoolExecutor | None] = (0, 0, None)


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
        "weighted sums of pools of a gigabyte or more), 1 (always) or 0 (never)"
    )


def wanted(row_bytes: int, minimum: int = COMPILE_MIN_BYTES) -> bool:
    """Whether a caller that sums ``row_bytes`` of low-precision rows (per search trial; for a
    merge, ``minimum`` is :data:`MERGE_COMPILE_MIN_BYTES`) compiles the native sum."""
    setting = compile_setting()
    if setting == "auto":
        return row_bytes >= minimum
    return setting == "always"


def weighted_sum(
    out: torch.Tensor,
    rows: Sequence[torch.Tensor],
    weights: Sequence[float] | torch.Tensor,
    divisor: float = 1.0,
    *,
    threads: int | None = None,
) -> int | None:
    """``out`` = Σ ``weights[i]``·``rows[i]`` (÷ ``divisor``), summed in float32, in one native pass.

    The same arithmetic as eager torch's ``out = rows[0]·w₀; out += rows[i]·wᵢ; out /= divisor``
    in float32, then cast to ``out``'s dtype: the results are equal bit for bit.

    Args:
        out: A 1-D contiguous CPU tensor: float32, or the rows' dtype.
        rows: K 1-D contiguous CPU tensors of ``out``'s length, all bfloat16 or all float16.
        weights: K coefficients (rounded to float32).
        divisor: What the sum is divided by (1: not divided).
        threads: Threads to share the sum (default: torch's intra-op thread count), taking
            pieces of :data:`CHUNK_ELEMENTS` in turn.

    Returns:
        ``None`` (nothing written) where the native sum does not apply: other dtypes or
        devices, short rows, or compiling failed; the caller then sums eagerly. Otherwise
        1 where ``out`` holds a NaN or an infinity, 0 where every value is finite.
    """
    import torch

    n = out.numel()
    k = len(rows)
    if k == 0 or n < MIN_ELEMENTS or len(weights) != k:
        return None
    dtype = rows[0].dtype
    names = {torch.bfloat16: "bf16", torch.float16: "f16", torch.float32: "f32"}
    if dtype not in (torch.bfloat16, torch.float16) or out.dtype not in (torch.float32, dtype):
        return None
    if any(not _plain(t, n, dtype) for t in rows) or not _plain(out, n, out.dtype):
        return None
    library = _load()
    function = getattr(library, f"hfr_wsum_{names[dtype]}_{names[out.dtype]}", None) if library else None
    if function is None:  # float16 on a CPU without its conversion instructions
        return None
    values = weights.tolist() if isinstance(weights, torch.Tensor) else list(weights)
    w = (ctypes.c_float * k)(*[float(x) for x in values])
    pointers = (ctypes.c_void_p * k)(*[t.data_ptr() for t in rows])
    count = max(1, min(threads or torch.get_num_threads(), -(-n // CHUNK_ELEMENTS)))
    if count == 1:
        return int(function(pointers, w, k, n, float(divisor), out.data_ptr(), n, 0, 1))

    def share(index: int) -> int:  # pieces index, index + count, ...: the threads stay close in memory
        return int(function(pointers, w, k, n, float(divisor), out.data_ptr(), CHUNK_ELEMENTS, index, count))

    helpers = [_helpers(count - 1).submit(share, i) for i in range(1, count)]
    try:
        bad = share(0)
    finally:
        shared = [helper.result() for helper in helpers]  # every helper is done with the rows
    return max(bad, *shared)


def _helpers(count: int) -> ThreadPoolExecutor:
    """Threads that share long sums with the calling thread, kept between calls (starting threads for
    each tensor cost a tenth of a candidate's time); made again in a forked child, which has none."""
    global _pool
    with _lock:
        pid, size, pool = _pool
        if pool is None or pid != os.getpid() or size < count:
            if pool is not None and pid == os.getpid():
                pool.shutdown(wait=False)
            pool = ThreadPoolExecutor(count, thread_name_prefix="hf-recycle-sum")
            _pool = (os.getpid(), count, pool)
        return pool


def _plain(t: torch.Tensor, n: int, dtype: torch.dtype) -> bool:
    """A 1-D contiguous CPU tensor of ``n`` elements of ``dtype``."""
    return (
        t.dtype == dtype and t.device.type == "cpu" and t.dim() == 1 and t.numel() == n and t.is_contiguous()
    )


def available() -> bool:
    """Compile the native sum now if not done yet; whether it can be used in this process."""
    return _load() is not None


def _load() -> ctypes.CDLL | None:
    """The compiled library (compiled by the first caller), or ``None`` where compiling failed."""
    global _library, _failed
    if _library is not None or _failed:
        return _library
    with _lock:
        if _library is None and not _failed:
            try:
                _library = _compile()
            except Exception as err:  # no compiler, a failed build: eager from now on
                _failed = True
                logger.warning(
                    "compiling the native weighted sum failed (%s); summing eagerly, two to three "
                    "times slower for big low-precision pools. Set %s=0 to skip compiling.",
                    str(err).splitlines()[0] if str(err) else type(err).__name__,
                    COMPILE_ENV,
                )
    return _library


def _compiler() -> list[str]:
    """The C compiler's command: ``$CC``, else the first of ``cc``, ``gcc`` and ``clang`` found."""
    if os.environ.get("CC", "").strip():
        return shlex.split(os.environ["CC"])
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return [found]
    raise RuntimeError("no C compiler found (set CC, or install gcc or clang)")


def _compile() -> ctypes.CDLL:
    """Compile :data:`_SOURCE` in a private temporary folder, load it, remove the folder."""
    if sys.platform == "win32":
        raise RuntimeError("the native sum is built on Linux and macOS only")
    compiler = _compiler()
    # no -ffast-math: the additions stay in order and the division exact, as in eager torch
    flags = ["-O3", "-fPIC", "-shared", "-ffp-contract=off", "-fno-strict-aliasing"]
    with tempfile.TemporaryDirectory(prefix="hf-recycle-native-") as folder:
        source = Path(folder) / "weighted_sum.c"
        source.write_text(_SOURCE)
        library = Path(folder) / "weighted_sum.so"
        # tuned for this CPU: its widest vectors, its float16 conversions and fused multiply-adds
        command = [*compiler, *flags, "-march=native", "-o", str(library), str(source)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            first = next((line for line in lines if "error" in line.lower()), lines[0] if lines else "")
            raise RuntimeError(f"{shlex.join(compiler)} failed: {first[:300]}")
        loaded = ctypes.CDLL(str(library))  # mapped: the file can go
    if not hasattr(loaded, "hfr_wsum_bf16_bf16"):
        raise RuntimeError("this CPU has no fused multiply-add instructions, which the native sum uses")
    for name in ("hfr_wsum_bf16_f32", "hfr_wsum_bf16_bf16", "hfr_wsum_f16_f32", "hfr_wsum_f16_f16"):
        function = getattr(loaded, name, None)
        if function is not None:
            function.restype = ctypes.c_int64
            function.argtypes = [
                ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_float, ctypes.c_void_p,
                ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
            ]  # fmt: skip
    logger.debug("native weighted sum compiled with %s", compiler[0])
    return loaded
