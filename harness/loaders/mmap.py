"""``mmap``: tinygrad's DISK device (``safe_load``, an mmap of each file) as the source, streamed chunk by chunk
into the final device buffers, with the float conversion done on the device.

The host holds no copy at all: each chunk goes from the mapped file pages (file-backed, reclaimable, counted
as RssFile not RssAnon) straight into a device buffer. A tensor that changes dtype goes through one staging
pair on the device: the chunk's source bits, and their converted bits from an integer kernel (exact, see
``_convert``), which are then copied device-to-device into the final buffer. Staging has a fixed size per
(source, target) pair, so each pair compiles one kernel however many tensor shapes the checkpoint has.
"""

from __future__ import annotations

from itertools import groupby
from pathlib import Path
from typing import Any

from tinygrad import Device, Tensor
from tinygrad.nn.state import safe_dtypes, safe_load

from harness.loaders._convert import bits_dtype, device_bits
from harness.loaders._device import allocate, copy_at, release_cache, write_at
from harness.loaders.base import ITEMSIZE, BoundInputs, Loader, LoadOptions, TensorPlan, as_checkpoint, plan_load


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
        elements = max(p.chunk_elements(chunk) for p in group)
        stage = allocate((elements,), bits_dtype(source), device)
        for plan in group:
            out[plan.name] = _stream_converted(disk[plan.path][plan.name], plan, stage, device, chunk)
        del stage
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


def _stream_converted(source: Tensor, plan: TensorPlan, stage: Tensor, device: str, chunk: int) -> Tensor:
    tensor = allocate(plan.shape, safe_dtypes[plan.final_dtype], device)
    if plan.numel:
        source.uop.buffer.ensure_allocated()
        for first, count in plan.chunks(chunk):
            write_at(stage, 0, _chunk_bytes(source, plan, first, count))
            # Stage is converted whole (a tail chunk leaves stale bits behind it): one kernel shape per pair.
            converted = device_bits(stage, plan.source_dtype, plan.final_dtype).realize()
            size = ITEMSIZE[plan.final_dtype]
            copy_at(tensor, first * size, converted, count * size)
            del converted
    return tensor


def device_bound(b: BoundInputs) -> int:
    """final_bytes + largest_converted_chunk_bytes: the final buffers, plus one staging pair (a chunk's
    source bits and its converted bits) while a converting tensor streams; staging is freed per pair."""
    return b.final_bytes + b.largest_converted_chunk_bytes


def ram_bound(b: BoundInputs) -> int:
    """device_bound: chunks go from mapped file pages (file-backed, reclaimable: not anonymous RAM) straight
    to the device, so the unified RAM the loader adds is its device memory alone."""
    return device_bound(b)


LOADER = Loader(
    name="mmap",
    load=load,
    device_bound=device_bound,
    ram_bound=ram_bound,
    description="tinygrad DISK (mmap) source streamed per chunk to the device; bf16/f32 -> target converted on the"
    " device with exact integer kernels through one fixed-size staging pair",
)
