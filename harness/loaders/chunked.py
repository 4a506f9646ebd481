"""``chunked``: one tensor at a time, big tensors in row chunks, each chunk taken from the file, converted on the
host and written straight into the tensor's final device buffer at its offset.

The file is mmap'd (its chunks are page-cache pages: file-backed, reclaimable, never an anonymous copy). Where
the device buffer can be mapped (OpenCL: on Mali and PoCL the map is the buffer's own unified memory), a chunk
is copied or converted (numpy / ml_dtypes, exact) straight from the file pages into the mapped device range; no
host buffer in between. Devices that cannot map convert into one host chunk that is then written. The device
holds only final buffers (no staging, no casts on the device: nothing for tinygrad's cache to keep). This is
what accelerate's ``low_cpu_mem_usage`` and llama.cpp aim for, on a device whose RAM is the host's RAM.
"""

from __future__ import annotations

import contextlib
import mmap
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
    LoadOptions,
    TensorPlan,
    as_checkpoint,
    plan_load,
)


def load(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Tensor]:
    plans = plan_load(as_checkpoint(checkpoint), options)  # validation and selection come before the device
    out: dict[str, Tensor] = {}
    maps: dict[Path, mmap.mmap] = {}
    try:
        for plan in plans:
            if plan.path not in maps:
                with plan.path.open("rb") as handle:
                    maps[plan.path] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            out[plan.name] = _load_one(maps[plan.path], plan, device, options.chunk_bytes)
    finally:
        for mapped in maps.values():
            # A propagating exception's frames may still hold views of the map; it closes when they are gone.
            with contextlib.suppress(BufferError):
                mapped.close()
    Device[device].synchronize()
    return out


def _load_one(mapped: mmap.mmap, plan: TensorPlan, device: str, chunk_bytes: int) -> Tensor:
    tensor = allocate(plan.shape, safe_dtypes[plan.final_dtype], device)
    source_type, size = numpy_dtype(plan.source_dtype), ITEMSIZE[plan.source_dtype]
    final_size = ITEMSIZE[plan.final_dtype]
    for first, count in plan.chunks(chunk_bytes):
        # The chunk as it is in the file: mapped page-cache pages (file-backed, reclaimable), not a copy.
        raw = np.frombuffer(mapped, dtype=np.uint8, count=count * size, offset=plan.offset + first * size)
        with mapped_at(tensor, first * final_size, count * final_size) as dst:
            if dst is None:  # a device without mappable buffers: convert to a host chunk, then write it
                write_at(tensor, first * final_size, host_convert(raw.view(source_type), plan.final_dtype))
            elif not plan.converts:
                np.copyto(dst, raw)
            else:
                with np.errstate(over="ignore", invalid="ignore"):  # bf16 >= 65536 becomes inf by design
                    np.copyto(dst.view(numpy_dtype(plan.final_dtype)), raw.view(source_type), casting="unsafe")
        del raw
    return tensor


def device_bound(b: BoundInputs) -> int:
    """final_bytes: each tensor's final buffer is allocated once and written in place; nothing else."""
    return b.final_bytes


def ram_bound(b: BoundInputs) -> int:
    """final_bytes + largest_chunk_source_bytes + largest_chunk_final_bytes: the device buffers (unified
    memory) plus, at most, one chunk's converted host copy and a driver's map of one chunk (the fallback paths;
    on a mappable device a bf16 -> fp16 or unconverted chunk goes from file pages to the device with no copy).
    Source chunks are mmap'd file pages (RssFile), which the bound does not need but still leaves room for."""
    return b.final_bytes + b.largest_chunk_source_bytes + b.largest_chunk_final_bytes


LOADER = Loader(
    name="chunked",
    load=load,
    device_bound=device_bound,
    ram_bound=ram_bound,
    description="per tensor, row chunks of chunk_bytes read from the file, converted on the host and written"
    " into the final device buffer at their offset",
)
