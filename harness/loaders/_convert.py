"""Float conversions that give the oracle's bits: on the host with numpy, on a device with integer kernels.

Host: ``ml_dtypes`` casts bf16 -> fp16 through float32 per element (exact, then one rounding), numpy casts
float32 -> fp16 with round-to-nearest-even and keeps subnormals. Both match the oracle.

Device: a tinygrad ``.cast(float16)`` is only correct where the device has native half. Without
``cl_khr_fp16`` (PoCL, and any Mali driver that hides it) tinygrad emulates half in float32 and its
emulation flushes fp16 subnormals to zero, on load and on store (measured on tinygrad 0.14). So the
device-side conversions here never touch a float16 value: they compute the target's *bit pattern* with
unsigned integer ops and the caller moves those bits into the final buffer byte for byte.
"""

from __future__ import annotations

import numpy as np
from tinygrad import Tensor, dtypes

from mali_hil.harness.checkpoints import numpy_dtype

_F16_INF = 0x7C00
_F16_QNAN = 0x7E00  # the canonical quiet NaN (sign added separately), as ml_dtypes produces


def host_convert(source: np.ndarray, final_dtype: str) -> np.ndarray:
    """``source`` (viewed in its safetensors dtype) as ``final_dtype``: a new array, or ``source`` if equal."""
    target = numpy_dtype(final_dtype)
    if source.dtype == target:
        return source
    with np.errstate(over="ignore", invalid="ignore"):  # bf16 >= 65536 becomes inf by design; NaN is data
        return source.astype(target)


def device_bits(bits: Tensor, source_dtype: str, final_dtype: str) -> Tensor:
    """Unsigned bit patterns of ``final_dtype`` computed from the source's bits (uint16 or uint32 tensor)."""
    if (source_dtype, final_dtype) == ("BF16", "F16"):
        return _f32_bits_to_f16_bits(bits.cast(dtypes.uint32) << 16)
    if (source_dtype, final_dtype) == ("F32", "F16"):
        return _f32_bits_to_f16_bits(bits)
    if (source_dtype, final_dtype) == ("BF16", "F32"):
        return bits.cast(dtypes.uint32) << 16  # bf16 is the top half of a float32: exact
    if (source_dtype, final_dtype) == ("F16", "F32"):
        return _f16_bits_to_f32_bits(bits)
    raise ValueError(f"no device conversion from {source_dtype} to {final_dtype}")


def bits_dtype(safetensors_dtype: str):  # -> tinygrad DType
    """The unsigned integer dtype that carries a float's bits on the device."""
    return {"BF16": dtypes.uint16, "F16": dtypes.uint16, "F32": dtypes.uint32}[safetensors_dtype]


def _rne_shift(value: Tensor, shift: Tensor) -> Tensor:
    """``value >> shift`` rounded to nearest, ties to even; every ``shift`` must be >= 1."""
    # Constants stay Python ints: tinygrad materializes ``Tensor.ones_like``/``full_like`` as whole buffers.
    kept = value >> shift
    rest = value & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    up = (rest > half) | ((rest == half) & ((kept & 1) == 1))
    return kept + up.cast(dtypes.uint32)


def _f32_bits_to_f16_bits(x: Tensor) -> Tensor:
    sign = (x >> 16) & 0x8000
    exp = (x >> 23) & 0xFF
    mant = x & 0x7FFFFF
    normal = exp >= 113  # 2**-14 and up: an fp16 normal (or an overflow, handled below)
    # Normal: drop 13 mantissa bits; a carry out of the mantissa correctly bumps the exponent (even into inf).
    # Subnormal: the value in units of 2**-24 is (implicit bit | mant) >> (126 - exp); past 25 it is 0.
    implicit = (exp > 0).cast(dtypes.uint32) << 23
    value = normal.where(((exp - 112) << 23) | mant, implicit | mant)
    shift = normal.where(13, (126 - exp.minimum(126)).minimum(25).maximum(1))
    magnitude = _rne_shift(value, shift.cast(dtypes.uint32)).minimum(_F16_INF)
    special = (mant != 0).where(_F16_QNAN, _F16_INF).cast(dtypes.uint32)
    magnitude = (exp == 0xFF).where(special, (exp >= 143).where(_F16_INF, magnitude))
    return (sign | magnitude).cast(dtypes.uint16)


def _f16_bits_to_f32_bits(h: Tensor) -> Tensor:
    x = h.cast(dtypes.uint32)
    sign = (x & 0x8000) << 16
    exp = (x >> 10) & 0x1F
    mant = x & 0x3FF
    normal = ((exp + 112) << 23) | (mant << 13)
    special = 0x7F800000 | (mant << 13)  # inf, or NaN keeping its payload
    # An fp16 subnormal is mant * 2**-24, a normal float32: float32 arithmetic states it exactly.
    subnormal = (mant.cast(dtypes.float32) * 2.0**-24).bitcast(dtypes.uint32)
    return sign | (exp == 0x1F).where(special, (exp == 0).where(subnormal, normal))
