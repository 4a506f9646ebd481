"""Byte-exact writes into part of a device buffer, the primitive the lean loaders are built on.

tinygrad 0.14 has no public "copy these bytes to offset X of that buffer". Its own routes cost memory or bits:
slice-assign compiles a copy kernel per shape, and any kernel that stores float16 on a device without
``cl_khr_fp16`` goes through tinygrad's float emulation, which flushes fp16 subnormals to zero. So:

- where the allocator can address a sub-range (``_offset``: CPU, CUDA, Metal, ...), a ``Buffer.view`` and the
  allocator's own copy;
- on OpenCL, whose tinygrad allocator cannot, ``clEnqueueWriteBuffer``/``clEnqueueCopyBuffer`` with an offset
  on tinygrad's own queue and ``cl_mem``, which is exactly what such a view would do.

Writes are blocking, so the caller may free or reuse its host chunk as soon as a call returns.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from tinygrad import Device, Tensor
from tinygrad.device import Allocator, Buffer
from tinygrad.dtype import DType, dtypes

from mali_hil.harness.loaders.base import LoaderError


def allocate(shape: Sequence[int], dtype: DType, device: str) -> Tensor:
    """A realized, allocated, uninitialised tensor: the final home of a weight, written piece by piece."""
    tensor = Tensor.empty(*shape, dtype=dtype, device=device)
    if tensor.numel():  # realize() alone leaves an empty buffer unallocated (and 0-element tensors have none)
        tensor.uop.buffer.ensure_allocated()
    return tensor


def buffer_of(tensor: Tensor) -> Buffer:
    buf = tensor.uop.buffer
    if buf.base is not buf or not buf.is_allocated():
        raise LoaderError(f"tensor on {tensor.device} is not a whole allocated buffer; write into allocate() results")
    return buf


def write_at(tensor: Tensor, byte_offset: int, data: np.ndarray | memoryview) -> None:
    """Copy ``data``'s bytes into ``tensor``'s buffer at ``byte_offset``; returns when the device has them."""
    host = np.frombuffer(data, dtype=np.uint8) if isinstance(data, memoryview) else data.reshape(-1).view(np.uint8)
    if host.size == 0:
        return
    buf = buffer_of(tensor)
    _check_range(buf, byte_offset, host.size)
    if _addressable(buf.allocator):
        view = buf.view(host.size, dtypes.uint8, byte_offset).ensure_allocated()
        # The allocator may keep the memoryview until its queue drains; synchronize before the caller reuses it.
        view.allocator._copyin(view._buf, memoryview(np.ascontiguousarray(host)))
        Device[buf.device].synchronize()
        return
    cl, check = _opencl(buf)
    dev = Device[buf.device]
    host = np.ascontiguousarray(host)
    check(cl.clEnqueueWriteBuffer(dev.queue, buf._buf, True, byte_offset, host.size, host.ctypes.data, 0, None, None))


@contextmanager
def mapped_at(tensor: Tensor, byte_offset: int, nbytes: int) -> Iterator[np.ndarray | None]:
    """Yield ``tensor``'s buffer bytes ``[byte_offset, byte_offset + nbytes)`` as a writable uint8 array, to be
    filled in place (no host copy in between); what it holds on entry is undefined. Yields None where the
    device offers no such mapping (then use ``write_at``).

    OpenCL: ``clEnqueueMapBuffer(CL_MAP_WRITE_INVALIDATE_REGION)``, unmapped and finished on exit. On unified
    memory (Mali, PoCL) the map is the buffer's own memory, so the caller's writes are the device write.
    """
    buf = buffer_of(tensor)
    _check_range(buf, byte_offset, nbytes)
    if nbytes == 0 or _addressable(buf.allocator):
        yield None
        return
    cl, check = _opencl(buf)
    dev = Device[buf.device]
    err = ctypes.c_int32(0)
    ptr = cl.clEnqueueMapBuffer(dev.queue, buf._buf, True, cl.CL_MAP_WRITE_INVALIDATE_REGION, byte_offset, nbytes,
                                0, None, None, ctypes.byref(err))  # fmt: skip
    check(err.value)
    try:
        yield np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr))
    finally:
        check(cl.clEnqueueUnmapMemObject(dev.queue, buf._buf, ptr, 0, None, None))
        check(cl.clFinish(dev.queue))


def read_at(tensor: Tensor, byte_offset: int, out: np.ndarray) -> np.ndarray:
    """Fill ``out`` with ``tensor``'s buffer bytes from ``byte_offset`` (a bounded read-back, e.g. for digests)."""
    host = out.reshape(-1).view(np.uint8)
    if host.size == 0:
        return out
    buf = buffer_of(tensor)
    _check_range(buf, byte_offset, host.size)
    if _addressable(buf.allocator):
        view = buf.view(host.size, dtypes.uint8, byte_offset).ensure_allocated()
        Device[buf.device].synchronize()
        view.allocator._copyout(memoryview(host), view._buf)
        return out
    cl, check = _opencl(buf)
    dev = Device[buf.device]
    check(cl.clEnqueueReadBuffer(dev.queue, buf._buf, True, byte_offset, host.size, host.ctypes.data, 0, None, None))
    return out


def copy_at(dst: Tensor, byte_offset: int, src: Tensor, nbytes: int) -> None:
    """Copy the first ``nbytes`` of ``src``'s buffer into ``dst``'s at ``byte_offset`` (same device)."""
    if nbytes == 0:
        return
    dbuf, sbuf = buffer_of(dst), buffer_of(src)
    _check_range(dbuf, byte_offset, nbytes)
    _check_range(sbuf, 0, nbytes)
    if _addressable(dbuf.allocator):
        dview = dbuf.view(nbytes, dtypes.uint8, byte_offset).ensure_allocated()
        sview = sbuf.view(nbytes, dtypes.uint8, 0).ensure_allocated()
        dview.copy_from(sview)
        return
    cl, check = _opencl(dbuf)
    dev = Device[dbuf.device]
    check(cl.clEnqueueCopyBuffer(dev.queue, sbuf._buf, dbuf._buf, 0, byte_offset, nbytes, 0, None, None))
    dev.synchronize()  # src is a staging buffer the caller refills next; let the copy finish first


def release_cache(device: str) -> None:
    """Hand buffers tinygrad's LRU cache keeps for reuse back to the driver (they count as device memory)."""
    Device[device].synchronize()
    allocator = Device[device].allocator
    if hasattr(allocator, "free_cache"):
        allocator.free_cache()


def _addressable(allocator: Allocator) -> bool:
    return type(allocator)._offset is not Allocator._offset


def _check_range(buf: Buffer, offset: int, nbytes: int) -> None:
    if offset < 0 or offset + nbytes > buf.nbytes:
        raise LoaderError(f"write of {nbytes} bytes at offset {offset} overruns a {buf.nbytes}-byte buffer")


def _opencl(buf: Buffer) -> tuple[Any, Callable[[int], None]]:
    from tinygrad.runtime.ops_cl import CLDevice, check

    if not isinstance(Device[buf.device], CLDevice):
        raise LoaderError(
            f"device {buf.device} can neither address part of a buffer nor is OpenCL; the chunked and mmap loaders"
            " need one of the two (use CL, CPU, CUDA or METAL)"
        )
    from tinygrad.runtime.autogen import opencl

    return opencl, check
