"""What this machine itself can do per byte, the yardsticks of `loaders.py`: memcpy (the goals' reference), ml_dtypes'
bf16 -> fp16 conversion, committing fresh pages, and the **bound** per conversion.

The bound is measured, not derived: every loader has to commit each final byte (a Mali driver hands out zeroed
pages when a buffer is created; the emulator's layer does the same) and pass each byte once through a copy or a
conversion into it. ``commit_and_pass`` times exactly that work, with nothing else, on one thread and on as many
threads as `chunked` uses, each thread committing and filling its own share of one fresh mapping. No loader on
this machine can load faster than that, however it orders or overlaps the two steps.
"""

from __future__ import annotations

import ctypes
import mmap
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from functools import partial

import numpy as np

GB = 1e9
MADV_POPULATE_WRITE = 23  # Linux >= 5.14; Python's mmap module names it only from 3.13 on
HUGE_PAGE = 2 << 20

_libc = ctypes.CDLL(None, use_errno=True)  # its madvise releases the GIL, so shares commit side by side
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


@dataclass(frozen=True)
class HostBandwidths:
    """Bytes per second (of source, for conversions) on one thread and, ``_threads``, on chunked's threads."""

    memcpy: float
    bf16_to_fp16: float
    commit: float
    memcpy_threads: float
    bf16_to_fp16_threads: float
    commit_and_copy: float  # the fp16 -> fp16 bound: the faster of one thread and chunked's
    commit_and_convert: float  # the bf16 -> fp16 bound

    def bounds(self) -> dict[str, float]:
        return {"fp16->fp16": self.commit_and_copy, "bf16->fp16": self.commit_and_convert}

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def best(cls, timings: list[HostBandwidths]) -> HostBandwidths:
        """Each figure at its best over several timings: other work during one does not lower the bar."""
        return cls(**{f.name: max(getattr(t, f.name) for t in timings) for f in fields(cls)})


def measure(nbytes: int, repeats: int, threads: int) -> HostBandwidths:
    """Every figure, each the best of ``repeats`` timings over ``nbytes`` of source."""
    import ml_dtypes

    ones = np.ones(nbytes, dtype=np.uint8)
    bf16 = np.random.default_rng(0).standard_normal(nbytes // 2, dtype=np.float32).astype(ml_dtypes.bfloat16)
    figures = HostBandwidths(
        memcpy=_sliced(ones, np.uint8, 1, repeats),
        bf16_to_fp16=_sliced(bf16, np.float16, 1, repeats),
        commit=commit_bandwidth(nbytes, repeats),
        memcpy_threads=_sliced(ones, np.uint8, threads, repeats),
        bf16_to_fp16_threads=_sliced(bf16, np.float16, threads, repeats),
        commit_and_copy=max(commit_and_pass(ones, np.uint8, n, repeats) for n in {1, threads}),
        commit_and_convert=max(commit_and_pass(bf16, np.float16, n, repeats) for n in {1, threads}),
    )
    print(f"host: memcpy {figures.memcpy / GB:.2f} GB/s ({figures.memcpy_threads / GB:.2f} on {threads} threads),"
          f" ml_dtypes bf16->fp16 {figures.bf16_to_fp16 / GB:.2f} GB/s ({figures.bf16_to_fp16_threads / GB:.2f} on"
          f" {threads} threads), commit of fresh pages {figures.commit / GB:.2f} GB/s; commit + copy"
          f" {figures.commit_and_copy / GB:.2f}, commit + conversion {figures.commit_and_convert / GB:.2f} GB/s",
          flush=True)  # fmt: skip
    return figures


def _best_time(run: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def _sliced(src: np.ndarray, dtype: type, threads: int, repeats: int) -> float:
    """Source bytes per second of ``src`` copied or converted into a pre-faulted array, sliced across ``threads``
    the way chunked slices a chunk (its own Slicer and slice function)."""
    from mali_hil.harness.loaders.chunked import Slicer, convert_slice

    dst = np.empty(src.size, dtype=dtype)
    slicer = Slicer(threads)
    try:
        # one untimed pass faults every destination page in: this times the pass alone, commit_bandwidth the commit
        slicer.run(src.size, src.nbytes, partial(convert_slice, src, dst))
        return src.nbytes / _best_time(lambda: slicer.run(src.size, src.nbytes, partial(convert_slice, src, dst)),
                                       repeats)  # fmt: skip
    finally:
        slicer.close()


def commit_bandwidth(nbytes: int, repeats: int) -> float:
    """Bytes per second of committing fresh memory the way the Mali layer commits a new device buffer (huge pages
    advised, then MADV_POPULATE_WRITE), on one thread. Unmapping is not timed."""
    best = float("inf")
    for _ in range(repeats):
        fresh = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        start = time.perf_counter()
        fresh.madvise(mmap.MADV_HUGEPAGE)
        fresh.madvise(MADV_POPULATE_WRITE)
        best = min(best, time.perf_counter() - start)
        fresh.close()
    return nbytes / best


def commit_and_pass(src: np.ndarray, dtype: type, threads: int, repeats: int) -> float:
    """Source bytes per second of committing a fresh mapping for ``src`` as ``dtype`` and copying or converting
    ``src`` into it, on ``threads`` threads, each doing both steps for its own share (best of ``repeats``)."""
    itemsize = np.dtype(dtype).itemsize
    per_share = -(-src.size // threads)
    per_share = -(-per_share * itemsize // HUGE_PAGE) * HUGE_PAGE // itemsize  # shares start on huge pages
    spans = [(a, min(a + per_share, src.size)) for a in range(0, src.size, per_share)]
    best = float("inf")
    with ThreadPoolExecutor(len(spans)) as pool:
        for _ in range(repeats):
            fresh = mmap.mmap(-1, src.size * itemsize, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            dst = np.frombuffer(fresh, dtype=dtype)
            share = partial(_commit_and_pass_share, src, dst, dst.ctypes.data, itemsize)
            start = time.perf_counter()
            list(pool.map(share, *zip(*spans, strict=True)))
            best = min(best, time.perf_counter() - start)
            del dst, share  # their exports of the mapping end before it is closed
            fresh.close()
    return src.nbytes / best


def _commit_and_pass_share(src: np.ndarray, dst: np.ndarray, base: int, itemsize: int, a: int, b: int) -> None:
    address, length = base + a * itemsize, (b - a) * itemsize
    for advice in (mmap.MADV_HUGEPAGE, MADV_POPULATE_WRITE):
        if _libc.madvise(address, length, advice) != 0:
            raise OSError(ctypes.get_errno(), f"madvise({advice}) of a fresh mapping failed")
    with np.errstate(over="ignore", invalid="ignore"):
        np.copyto(dst[a:b], src[a:b], casting="unsafe")
