"""``mmap``: tinygrad's DISK device (``safe_load``, an mmap of each file) as the source, streamed chunk by chunk
into the final device buffers, with the float conversion done on the device.

The host holds no copy at all: each chunk goes from the mapped file pages (file-backed, reclaimable, counted
as RssFile not RssAnon) straight into a device buffer. A tensor that changes dtype goes through one staging
pair on the device: the chunk's source bits, and their converted bits from an integer kernel (exact, see
``_convert``), which are then copied device-to-device into the final buffer. Staging has a fixed size per
(source, target) pair, and so does the conversion kernel: it converts one *window* of the staging pair whose
start is a bound variable, scheduled and compiled once per pair and launched once per window a chunk covers.
So the work per chunk follows the chunk's length (not the staging size), no graph is built per chunk, and
each pair compiles one kernel however many tensor shapes the checkpoint has.
"""

from __future__ import annotations

from itertools import groupby
from pathlib import Path
from typing import Any

from tinygrad import Device, Tensor
from tinygrad.engine.realize import compile_linear, link_linear, run_linear
from tinygrad.nn.state import safe_dtypes, safe_load
from tinygrad.uop.ops import UOp

from mali_hil.harness.loaders._convert import bits_dtype, device_bits
from mali_hil.harness.loaders._device import allocate, copy_at, release_cache, write_at
from mali_hil.harness.loaders.base import (
    ITEMSIZE,
    BoundInputs,
    Loader,
    LoadOptions,
    TensorPlan,
    as_checkpoint,
    first_kernels_ram,
    plan_load,
)

WINDOW = 1 << 20  # elements one launch of the conversion kernel converts (a staging pair this small: all of it)
ALIGN = 128  # window starts are multiples of this; an unaligned variable start measured 2x slower on PoCL
STAGING_SLACK_BYTES = (ALIGN - 1) * 8  # windowed staging is rounded up to ALIGN elements (<= 4 + 4 bytes each)


def load(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Tensor]:
    plans = plan_load(as_checkpoint(checkpoint), options)  # validation and selection come before the device
    disk: dict[Path, dict[str, Tensor]] = {}
    for plan in plans:
        if plan.path not in disk:
            disk[plan.path] = safe_load(plan.path)
    out: dict[str, Tensor] = {}
    chunk = options.chunk_bytes
    for plan in (p for p in plans if not p.converts):
        out[plan.name] = _stream_direct(disk[plan.path][plan.name], plan, device, chunk)

    def pair(p: TensorPlan) -> tuple[str, str]:
        return p.source_dtype, p.final_dtype

    # One (source, target) pair at a time, so at most one staging pair is ever alive on the device.
    for (source, _), group_iter in groupby(sorted((p for p in plans if p.converts), key=pair), key=pair):
        group = list(group_iter)
        staging = _Staging(source, group[0].final_dtype, max(p.chunk_elements(chunk) for p in group), device)
        for plan in group:
            out[plan.name] = _stream_converted(disk[plan.path][plan.name], plan, staging, device, chunk)
        del staging
        release_cache(device)  # tinygrad's LRU cache would otherwise keep this pair's staging alive
    disk.clear()  # unmaps the files once the last DISK tensor is gone
    Device[device].synchronize()
    return {plan.name: out[plan.name] for plan in plans}


def _chunk_bytes(source: Tensor, plan: TensorPlan, first: int, count: int) -> memoryview:
    """The mapped file bytes of elements ``[first, first + count)``: a view into the mmap, no copy."""
    itemsize = ITEMSIZE[plan.source_dtype]
    buf = source.uop.buffer.view(count * itemsize, safe_dtypes["U8"], first * itemsize).ensure_allocated()
    return buf.as_memoryview(allow_zero_copy=True)


def _stream_direct(source: Tensor, plan: TensorPlan, device: str, chunk: int) -> Tensor:
    tensor = allocate(plan.shape, safe_dtypes[plan.final_dtype], device)
    if plan.numel:
        source.uop.buffer.ensure_allocated()
        for first, count in plan.chunks(chunk):
            write_at(tensor, first * ITEMSIZE[plan.final_dtype], _chunk_bytes(source, plan, first, count))
    return tensor


class _Staging:
    """One (source, target) pair's staging on the device: ``stage`` (a chunk's source bits) and ``converted``
    (their target bits), plus the compiled kernel converting ``WINDOW`` elements of one into the other.

    Pairs whose largest chunk fits one window get a fixed kernel over the whole staging pair. Larger ones get
    a window starting at a bound variable (``ALIGN`` elements apart), so the kernel is compiled once and each
    chunk launches it ``ceil(count / WINDOW)`` times; their staging is rounded up to ``ALIGN`` elements so that
    the last window of a chunk can start aligned. A window may convert stale bits behind a chunk: never copied.
    """

    def __init__(self, source_dtype: str, final_dtype: str, elements: int, device: str) -> None:
        windowed = elements > WINDOW
        size = -(-elements // ALIGN) * ALIGN if windowed else elements
        self.window = WINDOW if windowed else size
        self.last_start = size - self.window  # a multiple of ALIGN when windowed, else 0
        self.stage = allocate((size,), bits_dtype(source_dtype), device)
        self.converted = allocate((size,), bits_dtype(final_dtype), device)
        start: UOp | int = 0
        if windowed:
            start = UOp.variable("mmap_window_start", 0, self.last_start // ALIGN).bind(0) * ALIGN
        window = slice(start, start + self.window)
        kernel = self.converted[window].assign(device_bits(self.stage[window], source_dtype, final_dtype))
        linear, var_vals = Tensor.linear_with_vars(kernel)  # what Tensor.realize runs, kept to run again
        self._linear = link_linear(compile_linear(linear))
        self._variable = next(iter(var_vals), None)

    def convert(self, count: int) -> None:
        """Convert ``stage[:count]`` into ``converted[:count]`` (queued on the device, in order)."""
        for first in range(0, count, self.window):
            start = min(first, self.last_start)
            run_linear(self._linear, {self._variable: start // ALIGN} if self._variable else {}, jit=True)


def _stream_converted(source: Tensor, plan: TensorPlan, staging: _Staging, device: str, chunk: int) -> Tensor:
    tensor = allocate(plan.shape, safe_dtypes[plan.final_dtype], device)
    if plan.numel:
        source.uop.buffer.ensure_allocated()
        size = ITEMSIZE[plan.final_dtype]
        for first, count in plan.chunks(chunk):
            write_at(staging.stage, 0, _chunk_bytes(source, plan, first, count))
            staging.convert(count)
            copy_at(tensor, first * size, staging.converted, count * size)
    return tensor


def device_bound(b: BoundInputs) -> int:
    """final_bytes + largest_converted_chunk_bytes (+ STAGING_SLACK_BYTES if any tensor converts): the final
    buffers, plus one staging pair (a chunk's source bits and its converted bits, rounded up to ALIGN elements
    when windowed) while a converting tensor streams; staging is freed per pair."""
    slack = STAGING_SLACK_BYTES if b.largest_converted_chunk_bytes else 0
    return b.final_bytes + b.largest_converted_chunk_bytes + slack


def ram_bound(b: BoundInputs) -> int:
    """device_bound: chunks go from mapped file pages (file-backed, reclaimable: not anonymous RAM) straight
    to the device, so the unified RAM the loader adds is its device memory alone; + first_kernels_ram: the
    process's first conversion kernels (tinygrad's state, base.FIRST_KERNELS_RAM)."""
    return device_bound(b) + first_kernels_ram(b)


LOADER = Loader(
    name="mmap",
    load=load,
    device_bound=device_bound,
    ram_bound=ram_bound,
    description="tinygrad DISK (mmap) source streamed per chunk to the device; bf16/f32 -> target converted on the"
    " device with exact integer kernels through one fixed-size staging pair",
)
