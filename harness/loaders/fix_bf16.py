"""exo's ``fix_bf16`` (Aug 2024) in its two modes, on tinygrad's lazy DISK tensors (``safe_load``).

``SUPPORT_BF16=1`` (exo's default) -> ``fix_bf16-device``: each tensor is copied to the target device as it is
stored (bf16) and cast there, so the source and the result coexist on the device while the cast runs, and
tinygrad's LRU cache keeps the freed source buffer afterwards. On a device without ``cl_khr_fp16`` tinygrad
emulates half through float32 and flushes fp16 subnormals to zero: this mode reproduces that too.

``SUPPORT_BF16=0`` -> ``fix_bf16-host``: tinygrad's old ``llvm_bf16_cast`` route on the host CPU device: bitcast
to uint16, widen to uint32, shift left 16, bitcast to float32, cast to the target, then move to the device.

Both registered loaders pin their mode whatever the environment says, so a result always names the mode it
ran; ``fix_bf16()`` itself reads ``SUPPORT_BF16`` when not told, as exo did. Tensors are realized one at a time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from tinygrad import Device, Tensor, dtypes
from tinygrad.dtype import DType
from tinygrad.nn.state import safe_dtypes, safe_load

from mali_hil.harness.loaders.base import (
    TARGETS,
    BoundInputs,
    Loader,
    LoadOptions,
    as_checkpoint,
    first_kernels_ram,
    plan_load,
)

SUPPORT_BF16_ENV = "SUPPORT_BF16"
HOST_DEVICE = "CPU"


def support_bf16_from_env() -> bool:
    """exo read ``SUPPORT_BF16`` as an integer defaulting to 1; anything but 0 means the device route."""
    return os.environ.get(SUPPORT_BF16_ENV, "1").strip() not in ("0", "")


def fix_bf16(
    weights: Mapping[str, Tensor], device: str, target: DType, support_bf16: bool | None = None
) -> dict[str, Tensor]:
    """Lazy tensors on ``device`` with every float converted to ``target`` (nothing is realized here)."""
    on_device = support_bf16_from_env() if support_bf16 is None else support_bf16
    convert = _device_cast if on_device else _host_cast
    return {name: convert(t, device, target) if _converts(t, target) else t.to(device) for name, t in weights.items()}


def _converts(t: Tensor, target: DType) -> bool:
    return dtypes.is_float(t.dtype) and t.dtype != target


def _device_cast(t: Tensor, device: str, target: DType) -> Tensor:
    return t.to(device).cast(target)


def _host_cast(t: Tensor, device: str, target: DType) -> Tensor:
    if t.dtype != dtypes.bfloat16:
        return t.to(HOST_DEVICE).cast(target).to(device)
    # llvm_bf16_cast moved the tensor first and bitcast on the host; tinygrad 0.14 then declares ``__bf16`` in
    # the CPU kernel, which clang refuses for its bare-metal x86 target. Reinterpreting the bits on the DISK
    # side first moves the same bytes and keeps bf16 out of every kernel.
    bits = t.bitcast(dtypes.uint16).to(HOST_DEVICE)
    return (bits.cast(dtypes.uint32) << 16).bitcast(dtypes.float32).cast(target).to(device)


def _load(checkpoint: Any, device: str, options: LoadOptions, support_bf16: bool) -> dict[str, Tensor]:
    plans = plan_load(as_checkpoint(checkpoint), options)  # validation and selection come before the device
    files = {path: safe_load(path) for path in dict.fromkeys(p.path for p in plans)}
    weights = {p.name: files[p.path][p.name] for p in plans}
    files.clear()
    fixed = fix_bf16(weights, device, safe_dtypes[TARGETS[options.target_dtype]], support_bf16)
    out = {}
    for name in list(fixed):
        out[name] = fixed.pop(name).realize()  # one at a time, as load_state_dict realizes them
        if not support_bf16:
            # tinygrad 0.14 enqueues the CPU -> device write without blocking, from a zero-copy view that does
            # not keep the CPU buffer alive; the CPU LRU cache then hands that buffer to the next tensor, whose
            # kernel can overwrite it before the device has read it (seen on PoCL under load). Waiting here
            # keeps the results right; the memory shape of the route is unchanged.
            Device[device].synchronize()
    Device[device].synchronize()
    return out


def load_device(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Tensor]:
    return _load(checkpoint, device, options, support_bf16=True)


def load_host(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Tensor]:
    return _load(checkpoint, device, options, support_bf16=False)


def device_bound_device(b: BoundInputs) -> int:
    """final_bytes + distinct_converted_source_bytes: every converted tensor's source copy lives on the device
    beside its result; once freed, tinygrad's LRU cache keeps one buffer per byte size until an allocation
    fails (exo never freed it)."""
    return b.final_bytes + b.distinct_converted_source_bytes


def ram_bound_device(b: BoundInputs) -> int:
    """device bound + source_bytes: tinygrad copies a mapped source whose address is not 16-byte aligned into
    an aligned host buffer and keeps it until the queue synchronizes, which exo's loop never asked for;
    + what the process's first cast kernels leave (base.FIRST_KERNELS_RAM)."""
    return device_bound_device(b) + b.source_bytes + first_kernels_ram(b)


def device_bound_host(b: BoundInputs) -> int:
    """final_bytes: converted tensors arrive from the CPU device already in their final dtype."""
    return b.final_bytes


def ram_bound_host(b: BoundInputs) -> int:
    """final_bytes + distinct_converted_(source + final)_bytes + unconverted source bytes: the device buffers;
    the CPU device's copy of each source and its result, kept per byte size by the CPU's LRU cache; and
    tinygrad's aligned staging copies of unconverted tensors, kept until the queue synchronizes;
    + first_kernels_ram: the process's first kernels (tinygrad's state, base.FIRST_KERNELS_RAM)."""
    unconverted = b.source_bytes - b.converted_source_bytes
    converted = b.distinct_converted_source_bytes + b.distinct_converted_final_bytes
    return b.final_bytes + converted + unconverted + first_kernels_ram(b)


DEVICE_LOADER = Loader(
    name="fix_bf16-device",
    load=load_device,
    device_bound=device_bound_device,
    ram_bound=ram_bound_device,
    description="exo 2024, SUPPORT_BF16=1: safe_load DISK tensors, each .to(device) then cast on the device",
    device_half=True,
)
HOST_LOADER = Loader(
    name="fix_bf16-host",
    load=load_host,
    device_bound=device_bound_host,
    ram_bound=ram_bound_host,
    description="exo 2024, SUPPORT_BF16=0: bf16 widened to float32 by bit shifts on the host CPU device, cast, then"
    " moved to the device",
)
