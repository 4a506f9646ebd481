"""Deliberately wrong loaders, each a plausible bug, for test_wrong_loaders.py: every one must be caught by the
property meant for it. Load them as ``mali_hil.properties.wrong_loaders:NAME`` (the worker imports this module by
its installed name, from any folder and on any board). Each reuses a built-in variant's code and changes one thing:

- ``truncating``: chunked, but bf16/f32 -> fp16 rounds toward zero instead of to nearest even (numerics);
- ``short_tail``: chunked, but a tensor of several chunks never gets its last one (numerics: digests);
- ``fixed_window``: chunked through a fixed 16 MiB conversion buffer: a larger chunk's overflow is dropped
  (numerics: digests of the tensors past every chunk);
- ``hoarding``: a plain function that keeps every converted host chunk until it returns, twice the RAM of a
  streaming loader, and declares no bounds (memory-bound: the default bound);
- ``leaky``: chunked, plus a 1 MiB device buffer per job kept in a module-level list (idempotence);
- ``whole_model``: chunked, ignoring the shard range: every node loads every tensor, exo #128 (shards);
- ``understated``: fix_bf16-device, declaring chunked's bounds: its source copies are not declared (memory-bound);
- ``header_order``: reads the header with plain json and takes tensors back to back in the header's order,
  ignoring ``data_offsets`` and the validated checkpoint it is given (corrupt-input);
- ``narrowing``: streaming, with I64/U64 tensors narrowed to 32 bits, as if every integer were an index (dtypes);
- ``scalars_as_vectors``: streaming, with 0-d tensors given shape (1,), as ``np.atleast_1d`` does (dtypes);
- ``empty_dropped``: streaming, skipping tensors with no elements ("nothing to load") (dtypes);
- ``bool_as_float``: streaming, converting BOOL masks to the float target like any non-integer (dtypes);
- ``offsets_32bit``: streaming, with a tensor's file offset kept in 32 bits: wraps past 4 GiB (offsets-4gib);
- ``descriptor_per_tensor``: streaming, plus a descriptor of the tensor's file opened per tensor and never
  closed (leaks).

``streaming`` is the correct plain function most of them are one line away from: chunked's scheme through the
loaders' public helpers, bounds undeclared. Imports of tinygrad and the built-in loaders happen inside the
functions, so the test process can read the declared bounds without them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from mali_hil.harness.loaders import Loader, LoadOptions, chunked
from mali_hil.harness.loaders.base import TARGETS

LEAK_BYTES = 1 << 20
FIXED_WINDOW_BYTES = 16 << 20
_LEAKED: list[Any] = []  # the leak: device tensors no job ever gives back


Convert = Callable[[np.ndarray, str], np.ndarray]
Edit = Callable[[Any], Any]  # a TensorPlan -> the plan followed instead, or None to skip the tensor


def _chunked_with(checkpoint: Any, device: str, options: LoadOptions, convert: Convert, drop_tail: bool = False,
                  window: int | None = None, hoard: list[np.ndarray] | None = None,
                  edit: Edit | None = None) -> dict[str, Any]:  # fmt: skip
    """chunked's scheme (plan, one final buffer per tensor, row chunks read, converted on the host, written at their
    offset), with the conversion swapped and, each a one-line bug: with ``drop_tail``, the last chunk of
    multi-chunk tensors skipped; with ``window``, each chunk cut to that many source bytes; with ``hoard``, every
    converted chunk appended there; with ``edit``, each tensor's plan changed (its final dtype, shape or offset) or
    the tensor skipped. Written against the loaders' public helpers only, so a rewrite of chunked's internals
    leaves it working."""
    from tinygrad import Device
    from tinygrad.nn.state import safe_dtypes

    from mali_hil.harness.checkpoints import numpy_dtype
    from mali_hil.harness.loaders import as_checkpoint, plan_load
    from mali_hil.harness.loaders._device import allocate, write_at
    from mali_hil.harness.loaders.base import ITEMSIZE

    out = {}
    for planned in plan_load(as_checkpoint(checkpoint), options):
        plan = planned if edit is None else edit(planned)
        if plan is None:
            continue
        tensor = allocate(plan.shape, safe_dtypes[plan.final_dtype], device)
        chunks = plan.chunks(options.chunk_bytes)
        if drop_tail and len(chunks) > 1:
            chunks = chunks[:-1]
        for first, whole in chunks:
            count = whole if window is None else min(whole, window // ITEMSIZE[plan.source_dtype])
            offset = plan.offset + first * ITEMSIZE[plan.source_dtype]
            raw = np.fromfile(plan.path, dtype=numpy_dtype(plan.source_dtype), count=count, offset=offset)
            host = convert(raw, plan.final_dtype)
            write_at(tensor, first * ITEMSIZE[plan.final_dtype], host)
            if hoard is not None:
                hoard.append(host)
        out[plan.name] = tensor
    Device[device].synchronize()
    return out


def streaming(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Any]:
    """Correct: chunked's scheme as a plain function without declared bounds (judged by the default bound)."""
    from mali_hil.harness.loaders._convert import host_convert

    return _chunked_with(checkpoint, device, options, host_convert)


def _host_with(checkpoint: Any, device: str, options: LoadOptions, edit: Edit) -> dict[str, Any]:
    from mali_hil.harness.loaders._convert import host_convert

    return _chunked_with(checkpoint, device, options, host_convert, edit=edit)


def narrowing(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Any]:
    """streaming, with 64-bit integers narrowed to 32 bits (an I64 ``position_ids`` taken for an int32 index)."""
    narrow = {"I64": "I32", "U64": "U32"}
    return _host_with(checkpoint, device, options, lambda p: replace(p, final_dtype=narrow.get(p.final_dtype,
                                                                                               p.final_dtype)))


def scalars_as_vectors(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Any]:
    """streaming, with every 0-d tensor (a stored scale, a rope theta) given shape (1,), as np.atleast_1d does."""
    return _host_with(checkpoint, device, options, lambda p: replace(p, shape=p.shape or (1,)))


def empty_dropped(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Any]:
    """streaming, skipping tensors with no elements: "nothing to load"."""
    return _host_with(checkpoint, device, options, lambda p: p if p.numel else None)


def bool_as_float(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Any]:
    """streaming, converting BOOL masks to the float target like every dtype that is not an integer."""
    return _host_with(checkpoint, device, options,
                      lambda p: replace(p, final_dtype=TARGETS[options.target_dtype]) if p.source_dtype == "BOOL"
                      else p)  # fmt: skip


def offsets_32bit(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Any]:
    """streaming, with each tensor's file offset held in an unsigned 32-bit field: past 4 GiB it wraps."""
    return _host_with(checkpoint, device, options, lambda p: replace(p, offset=p.offset % (1 << 32)))


def descriptor_per_tensor(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Any]:
    """streaming, plus the tensor's file opened for each tensor (to check it is still there) and never closed."""
    import os

    from mali_hil.harness.loaders import as_checkpoint, plan_load

    for plan in plan_load(as_checkpoint(checkpoint), options):
        os.fstat(os.open(plan.path, os.O_RDONLY))
    return streaming(checkpoint, device, options)


def _toward_zero(raw: np.ndarray, final_dtype: str) -> np.ndarray:
    """The final dtype's value next to zero of the two around ``raw``: rounding to nearest, then one step back
    wherever that went away from zero (so a finite value past fp16's range becomes 65504, not inf)."""
    from mali_hil.harness.loaders._convert import host_convert

    rounded = host_convert(raw, final_dtype)
    if rounded is raw or rounded.dtype != np.float16:
        return rounded
    with np.errstate(invalid="ignore", over="ignore"):
        away = np.abs(rounded.astype(np.float32)) > np.abs(raw.astype(np.float32))  # NaN compares False: kept
    bits = rounded.view(np.uint16).copy()
    bits[away] -= 1  # same sign, one unit less magnitude
    return bits.view(np.float16)


def truncating(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Any]:
    """chunked with bf16/f32 -> fp16 truncated (rounded toward zero) instead of rounded to nearest even."""
    return _chunked_with(checkpoint, device, options, _toward_zero)


def short_tail(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Any]:
    """chunked that never writes the last chunk of a tensor loaded in several (an off-by-one in the chunk loop)."""
    from mali_hil.harness.loaders._convert import host_convert

    return _chunked_with(checkpoint, device, options, host_convert, drop_tail=True)


def fixed_window(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Any]:
    """streaming through a fixed 16 MiB conversion buffer: of a larger chunk only the first 16 MiB is converted and
    written, the rest of the tensor's buffer keeps whatever it held."""
    from mali_hil.harness.loaders._convert import host_convert

    return _chunked_with(checkpoint, device, options, host_convert, window=FIXED_WINDOW_BYTES)


def hoarding(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Any]:
    """streaming that keeps every converted host chunk until it returns (a list meant for debugging, never
    cleared): the model twice in RAM, once on the device and once on the host."""
    from mali_hil.harness.loaders._convert import host_convert

    return _chunked_with(checkpoint, device, options, host_convert, hoard=[])


def leaky(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Any]:
    """chunked, plus a scratch buffer per job kept alive in a module-level list (a 'cache' never cleared)."""
    from tinygrad import dtypes

    from mali_hil.harness.loaders._device import allocate
    from mali_hil.harness.loaders.chunked import load

    _LEAKED.append(allocate((LEAK_BYTES,), dtypes.uint8, device))
    return load(checkpoint, device, options)


def whole_model(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Any]:
    """chunked, ignoring the node's shard range: every node loads the whole model (exo issue #128)."""
    from mali_hil.harness.loaders.chunked import load

    return load(checkpoint, device, replace(options, shard=None))


def _load_fix_bf16_device(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Any]:
    from mali_hil.harness.loaders.fix_bf16 import load_device

    return load_device(checkpoint, device, options)


understated = Loader(
    name="understated",
    load=_load_fix_bf16_device,
    device_bound=chunked.device_bound,
    ram_bound=chunked.ram_bound,
    description="fix_bf16-device declaring chunked's bounds: the bf16 sources it keeps on the device are not declared",
)


def header_order(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Any]:
    """Skips validation: each file's header read with plain json, tensors taken back to back from the start of
    the data in the header's key order; ``data_offsets`` and the validated checkpoint it was given are ignored."""
    from tinygrad import Tensor

    from mali_hil.harness.checkpoints import numpy_dtype
    from mali_hil.harness.loaders._convert import host_convert
    from mali_hil.harness.loaders.base import FLOAT_SOURCES, TARGETS

    out = {}
    for path in checkpoint.files:
        data = path.read_bytes()
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + size])
        cursor = 8 + size
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            dtype = numpy_dtype(entry["dtype"])
            count = int(np.prod(entry["shape"], dtype=np.int64))
            raw = np.frombuffer(data, dtype=dtype, count=count, offset=cursor)
            cursor += raw.nbytes
            final = TARGETS[options.target_dtype] if entry["dtype"] in FLOAT_SOURCES else entry["dtype"]
            values = host_convert(raw, final).reshape(entry["shape"])
            out[name] = Tensor(values.reshape(-1).copy(), device=device).reshape(values.shape).contiguous().realize()
    return out
