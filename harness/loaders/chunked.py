"""``chunked``: one tensor at a time, big tensors in row chunks, each chunk read, converted on the host and
written straight into the tensor's final device buffer at its offset.

Per chunk the host holds the bytes read from the file and their converted copy, nothing more; the device
holds only final buffers (no staging, no casts on the device: nothing for tinygrad's cache to keep). This is
what accelerate's ``low_cpu_mem_usage`` and llama.cpp aim for, on a device whose RAM is the host's RAM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tinygrad import Device, Tensor
from tinygrad.nn.state import safe_dtypes

from harness.checkpoints import numpy_dtype
from harness.loaders._convert import host_convert
from harness.loaders._device import allocate, write_at
from harness.loaders.base import ITEMSIZE, BoundInputs, Loader, LoadOptions, TensorPlan, as_checkpoint, plan_load


def load(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Tensor]:
    plans = plan_load(as_checkpoint(checkpoint), options)  # validation and selection come before the device
    out: dict[str, Tensor] = {}
    handles: dict[Path, Any] = {}
    try:
        for plan in plans:
            if plan.path not in handles:
                handles[plan.path] = plan.path.open("rb", buffering=0)
            out[plan.name] = _load_one(handles[plan.path], plan, device, options.chunk_bytes)
    finally:
        for handle in handles.values():
            handle.close()
    Device[device].synchronize()
    return out


def _load_one(handle: Any, plan: TensorPlan, device: str, chunk_bytes: int) -> Tensor:
    tensor = allocate(plan.shape, safe_dtypes[plan.final_dtype], device)
    source_type = numpy_dtype(plan.source_dtype)
    for first, count in plan.chunks(chunk_bytes):
        raw = np.empty(count, dtype=source_type)
        _read_exactly(handle, plan.offset + first * ITEMSIZE[plan.source_dtype], raw.view(np.uint8))
        final = host_convert(raw, plan.final_dtype)
        write_at(tensor, first * ITEMSIZE[plan.final_dtype], final)
        del raw, final  # the next chunk's buffers take their place, never both at once
    return tensor


def _read_exactly(handle: Any, offset: int, into: np.ndarray) -> None:
    handle.seek(offset)
    view = memoryview(into)
    done = 0
    while done < len(view):
        got = handle.readinto(view[done:])
        if not got:
            raise EOFError(f"{handle.name} ended {len(view) - done} bytes early at offset {offset + done}")
        done += got


def device_bound(b: BoundInputs) -> int:
    """final_bytes: each tensor's final buffer is allocated once and written in place; nothing else."""
    return b.final_bytes


def ram_bound(b: BoundInputs) -> int:
    """final_bytes + largest_chunk_source_bytes + largest_chunk_final_bytes: the device buffers (unified
    memory) plus one chunk as read and its converted copy (an unconverted chunk is written as read)."""
    return b.final_bytes + b.largest_chunk_source_bytes + b.largest_chunk_final_bytes


LOADER = Loader(
    name="chunked",
    load=load,
    device_bound=device_bound,
    ram_bound=ram_bound,
    description="per tensor, row chunks of chunk_bytes read from the file, converted on the host and written"
    " into the final device buffer at their offset",
)
