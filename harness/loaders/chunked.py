"""``chunked``: one tensor at a time, big tensors in row chunks, each chunk taken from the file, converted on the
host and written straight into the tensor's final device buffer at its offset.

Where the device buffer can be mapped (OpenCL: on Mali and PoCL the map is the buffer's own unified memory), a
chunk goes straight from the page cache into the mapped device range, with no host buffer in between: read with
``preadv``, and when its type changes but not its size (bf16 -> fp16), converted in place there, slice by slice
while the slice is still in the CPU's cache (numpy / ml_dtypes, exact). A conversion that changes the size
(float32 -> fp16) reads the mmap'd file's pages instead (file-backed, reclaimable, never an anonymous copy).
Devices that cannot map convert into one host chunk that is then written. The device holds only final buffers
(no staging, no casts on the device: nothing for tinygrad's cache to keep). This is what accelerate's
``low_cpu_mem_usage`` and llama.cpp aim for, on a device whose RAM is the host's RAM.

A chunk is read or converted in slices shared by the loading thread and up to ``COPY_THREADS - 1`` helpers
(``preadv``, numpy and ml_dtypes release the GIL): ml_dtypes converts bf16 -> fp16 at 2.3-3.3 GB/s on one core,
the slowest stage of the load. While the helpers work on a tensor's first chunk, the loading thread allocates the
next tensor, whose buffer the driver commits (zeroed pages, on a Mali as on the emulator), so the commit runs
beside a conversion, which is bound by the CPU, instead of after it (a plain copy already fills the memory bus and
gains nothing). No thread holds memory of its own, and every buffer is a final one, so the bounds are the same.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tinygrad import Device, Tensor
from tinygrad.nn.state import safe_dtypes

from mali_hil.harness.checkpoints import numpy_dtype
from mali_hil.harness.loaders._convert import host_convert
from mali_hil.harness.loaders._device import allocate, mapped_at, write_at
from mali_hil.harness.loaders.base import (
    ITEMSIZE,
    BoundInputs,
    Loader,
    LoaderError,
    LoadOptions,
    TensorPlan,
    as_checkpoint,
    plan_load,
)

COPY_THREADS = 4  # at most; boards with fewer cores get one per core
SLICE_BYTES = 4 << 20  # a chunk is split only into slices of at least this many source bytes


def copy_threads() -> int:
    """Threads for one chunk's copy: one per core this process may run on, at most COPY_THREADS."""
    return max(1, min(COPY_THREADS, len(os.sched_getaffinity(0))))


def load(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Tensor]:
    plans = plan_load(as_checkpoint(checkpoint), options)  # validation and selection come before the device
    out: dict[str, Tensor] = {}
    files: dict[Path, _Source] = {}
    slicer = Slicer(copy_threads())
    ahead = _AllocateAhead(device)
    try:
        for plan, following in itertools.zip_longest(plans, plans[1:]):
            if plan.path not in files:
                files[plan.path] = _Source.open(plan.path)
            tensor = ahead.take(plan)
            out[plan.name] = _load_one(files[plan.path], plan, tensor, options.chunk_bytes, slicer,
                                       partial(ahead.prepare, following) if following else None)  # fmt: skip
    finally:
        slicer.close()  # no copy may still write into a buffer once load returns or raises
        for source in files.values():
            source.close()
    Device[device].synchronize()
    return out


class _AllocateAhead:
    """The next tensor's buffer, allocated while the copy threads fill the current one.

    Allocating commits the buffer's memory (a Mali driver hands out zeroed pages when the buffer is created):
    memory-bound work that fits beside a conversion bound by the CPU (bf16 loads measured 15-25 % faster; plain
    fp16 copies, which fill the memory bus already, not). All device calls stay on the loading thread: only the
    copy threads run beside it, and they touch nothing but mapped memory. The device holds no more than without
    it: every buffer is a final one, allocated one tensor earlier.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self._ready: tuple[TensorPlan, Tensor] | None = None

    def prepare(self, plan: TensorPlan) -> None:
        self._ready = (plan, allocate(plan.shape, safe_dtypes[plan.final_dtype], self.device))

    def take(self, plan: TensorPlan) -> Tensor:
        ready, self._ready = self._ready, None
        if ready is not None and ready[0] is plan:
            return ready[1]
        return allocate(plan.shape, safe_dtypes[plan.final_dtype], self.device)


class _Source:
    """A checkpoint file, read two ways: its descriptor for unconverted chunks, with ``preadv`` (from the page cache
    straight into the device range: no page of the file is mapped, so no page-table entry is set up for it, which
    made copies from the map 1.5x slower), and a map of it for the chunks converted as they are read."""

    def __init__(self, path: Path, fd: int, mapped: mmap.mmap) -> None:
        self.path, self.fd, self.mapped = path, fd, mapped

    @classmethod
    def open(cls, path: Path) -> _Source:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return cls(path, fd, mmap.mmap(fd, 0, access=mmap.ACCESS_READ))
        except BaseException:
            os.close(fd)
            raise

    def read_into(self, target: np.ndarray, offset: int) -> None:
        """Fill ``target`` (bytes) from the file at ``offset``; LoaderError if the file ends first."""
        view, done = memoryview(target).cast("B"), 0
        while done < len(view):
            count = os.preadv(self.fd, [view[done:]], offset + done)
            if count == 0:
                raise LoaderError(f"{self.path} ends at byte {offset + done}, inside a tensor: it was cut after it"
                                  " was checked")  # fmt: skip
            done += count

    def close(self) -> None:
        # A propagating exception's frames may still hold views of the map; it closes when they are gone.
        with contextlib.suppress(BufferError):
            self.mapped.close()
        os.close(self.fd)


def _load_one(source: _Source, plan: TensorPlan, tensor: Tensor, chunk_bytes: int, slicer: Slicer,
              meanwhile: Callable[[], None] | None) -> Tensor:  # fmt: skip
    """Fill ``tensor`` from the file; ``meanwhile`` runs once on this thread while the first chunk is copied."""
    source_type, size = numpy_dtype(plan.source_dtype), ITEMSIZE[plan.source_dtype]
    final_type, final_size = numpy_dtype(plan.final_dtype), ITEMSIZE[plan.final_dtype]
    for first, count in plan.chunks(chunk_bytes):
        at = plan.offset + first * size
        with mapped_at(tensor, first * final_size, count * final_size) as dst:
            if dst is not None and (not plan.converts or size == final_size):
                # read straight into the device range; a conversion between types of one size then runs in
                # place, slice by slice while the slice is still in cache (no file page mapped, no host copy)
                convert = (source_type, final_type) if plan.converts else None
                slicer.run(count, count * size, partial(_read_slice, source, dst, at, size, convert), meanwhile)
                meanwhile = None
                continue
            # The chunk as it is in the file: mapped page-cache pages (file-backed, reclaimable), not a copy.
            raw = np.frombuffer(source.mapped, dtype=source_type, count=count, offset=at)
            if dst is None:  # a device without mappable buffers: convert to a host chunk, then write it
                write_at(tensor, first * final_size, host_convert(raw, plan.final_dtype))
            else:
                slicer.run(count, count * size, partial(convert_slice, raw, dst.view(final_type)), meanwhile)
                meanwhile = None
            del raw
    if meanwhile is not None:  # nothing went to the copy threads (an empty tensor, a device that cannot map)
        meanwhile()
    return tensor


class Slicer:
    """Runs a chunk's work in slices of about ``SLICE_BYTES`` of source, taken in turn by the calling thread and
    up to ``threads - 1`` helper threads, so a thread that was busy elsewhere (``meanwhile``) joins in when it is
    free rather than leaving a core idle. The helpers start at the first large chunk: a load of small tensors
    starts none."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads - 1, thread_name_prefix="chunked-copy") if threads > 1 else None

    def run(self, count: int, nbytes: int, work: Callable[[int, int], None],
            meanwhile: Callable[[], None] | None = None) -> None:  # fmt: skip
        """``work(a, b)`` over ``[0, count)`` elements, ``nbytes`` of source in all. ``meanwhile()``, if given, runs
        on the calling thread first, while the helpers work; any exception is raised once every slice has ended."""
        slices = max(1, min(count, nbytes // SLICE_BYTES))
        if self._pool is None or (slices == 1 and meanwhile is None):
            work(0, count)
            if meanwhile is not None:
                meanwhile()
            return
        edges = [count * i // slices for i in range(slices + 1)]
        queue = _Slices(work, itertools.pairwise(edges))
        helpers = [self._pool.submit(queue.drain) for _ in range(min(self.threads - 1, slices))]
        try:
            if meanwhile is not None:
                meanwhile()
            queue.drain()
        except BaseException:
            queue.stop()
            raise
        finally:
            wait(helpers)  # every slice has ended before the chunk is unmapped, even when one of them raised
        for helper in helpers:
            helper.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


class _Slices:
    """The slices of one chunk not yet taken; after a failure, the rest are left undone."""

    def __init__(self, work: Callable[[int, int], None], spans: Iterable[tuple[int, int]]) -> None:
        self._work, self._spans, self._lock = work, iter(spans), threading.Lock()

    def drain(self) -> None:
        while True:
            with self._lock:
                span = next(self._spans, None)
            if span is None:
                return
            try:
                self._work(*span)
            except BaseException:
                self.stop()
                raise

    def stop(self) -> None:
        with self._lock:
            self._spans = iter(())


def _read_slice(source: _Source, dst: np.ndarray, at: int, size: int, convert: tuple[Any, Any] | None, a: int,
                b: int) -> None:  # fmt: skip
    """Elements ``[a, b)`` of a chunk from the file into ``dst`` (bytes); if ``convert`` is (source type, final
    type) of one item size, converted where they landed."""
    target = dst[a * size : b * size]
    source.read_into(target, at + a * size)
    if convert is not None:
        stored = target.view(convert[0])
        convert_slice(stored, target.view(convert[1]), 0, stored.size)  # elementwise: numpy needs no temporary


def convert_slice(source: np.ndarray, target: np.ndarray, a: int, b: int) -> None:
    """``target[a:b] = source[a:b]``, converted to ``target``'s dtype (one slice of a chunk)."""
    source, target = source[a:b], target[a:b]
    with np.errstate(over="ignore", invalid="ignore"):  # bf16 >= 65536 becomes inf by design
        np.copyto(target, source, casting="unsafe")


def device_bound(b: BoundInputs) -> int:
    """final_bytes: each tensor's final buffer is allocated once and written in place; nothing else."""
    return b.final_bytes


def ram_bound(b: BoundInputs) -> int:
    """final_bytes + largest_chunk_source_bytes + largest_chunk_final_bytes: the device buffers (unified
    memory) plus, at most, one chunk's converted host copy and a driver's map of one chunk (the fallback paths;
    on a mappable device a bf16 -> fp16 or unconverted chunk goes from file pages to the device with no copy).
    A conversion that changes the item size reads mmap'd file pages (RssFile), which the bound does not need
    but still leaves room for."""
    return b.final_bytes + b.largest_chunk_source_bytes + b.largest_chunk_final_bytes


LOADER = Loader(
    name="chunked",
    load=load,
    device_bound=device_bound,
    ram_bound=ram_bound,
    description="per tensor, row chunks of chunk_bytes read from the file, converted on the host and written"
    " into the final device buffer at their offset",
)
