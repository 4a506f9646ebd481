"""Tensor values made from a seed, chunk by chunk, for writing test checkpoints.

A fill is a callable: given a ``TensorSpec`` it yields numpy arrays of the tensor's dtype that together
hold its values in C order. Values depend only on (seed, tensor name) and the element's position, never
on the chunk size, so a test can recompute any tensor and compare it bit for bit with what a loader read.

- ``normal``: N(0, std) rounded to bfloat16 (round-to-nearest-even, ml_dtypes), then stored in the target
  dtype. F32/F64 hold those bf16 values exactly; F16 rounds them once more (only tiny values change).
- ``constant``: one value everywhere, cast to the target dtype.
- ``special``: bf16 bit patterns for numerics tests, alternating a run of ``SPECIAL_BF16`` with an equal run
  of random bits. 65504 (fp16's max) is not a bf16 value; its bf16 neighbours 65280 and 65536 are listed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from mali_hil.harness.checkpoints.faults import FillError
from mali_hil.harness.checkpoints.format import TensorSpec, numpy_dtype

#: Dtypes the fills can produce.
FILL_DTYPES = ("BF16", "F16", "F32", "F64")
#: Elements per chunk: 1 Mi elements is 2 MiB of bf16, small next to any RAM budget yet fast to write.
DEFAULT_CHUNK_ELEMS = 1 << 20

#: (label, bf16 bits) cycled by the ``special`` fill; labels say why each value matters for bf16 -> fp16.
SPECIAL_BF16: tuple[tuple[str, int], ...] = (
    ("+0", 0x0000),
    ("-0", 0x8000),
    ("min bf16 subnormal", 0x0001),
    ("-min bf16 subnormal", 0x8001),
    ("max bf16 subnormal", 0x007F),
    ("2^-25: fp16 tie, rounds to +0", 0x3300),
    ("-2^-25: fp16 tie, rounds to -0", 0xB300),
    ("1.5*2^-25: fp16 tie, rounds up to 2^-24", 0x3340),
    ("-1.5*2^-25", 0xB340),
    ("2^-24: min fp16 subnormal", 0x3380),
    ("2.5*2^-24: fp16 tie, rounds to even 2^-23", 0x3420),
    ("2^-20 + 2^-27: fp16 subnormal, rounds down", 0x3581),
    ("(255/256)*2^-14: largest bf16 below fp16 normals", 0x387F),
    ("2^-14: min fp16 normal", 0x3880),
    ("1.0", 0x3F80),
    ("-1.0", 0xBF80),
    ("65280: largest bf16 finite in fp16", 0x477F),
    ("-65280", 0xC77F),
    ("65536: smallest bf16 that overflows fp16", 0x4780),
    ("-65536", 0xC780),
    ("65792: above 65536", 0x4781),
    ("99840: well above 65536", 0x47C3),
    ("max bf16", 0x7F7F),
    ("-max bf16", 0xFF7F),
    ("+inf", 0x7F80),
    ("-inf", 0xFF80),
    ("quiet NaN", 0x7FC0),
    ("-quiet NaN", 0xFFC0),
    ("signalling NaN with payload", 0x7F81),
    ("-NaN, all payload bits", 0xFFFF),
)
_SPECIAL_BITS = np.array([bits for _, bits in SPECIAL_BF16], dtype=np.uint16)

Fill = Callable[[TensorSpec], Iterator[np.ndarray]]


def tensor_rng(seed: int, name: str) -> np.random.Generator:
    """The random stream of one tensor: a function of (seed, name) only."""
    if type(seed) is not int or seed < 0:
        raise FillError(f"seed must be a non-negative integer, not {seed!r}")
    words = np.frombuffer(hashlib.sha256(name.encode("utf-8")).digest()[:16], dtype="<u4")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *words.tolist()])))


@dataclass(frozen=True)
class NormalFill:
    """N(0, std) values rounded to bf16, per (seed, tensor name)."""

    seed: int = 0
    std: float = 0.02
    chunk_elems: int = DEFAULT_CHUNK_ELEMS

    def __call__(self, spec: TensorSpec) -> Iterator[np.ndarray]:
        target = _target_dtype(spec)
        return self._chunks(spec, target, tensor_rng(self.seed, spec.name))

    def _chunks(self, spec: TensorSpec, target: np.dtype, rng: np.random.Generator) -> Iterator[np.ndarray]:
        std = np.float32(self.std)
        for _, count in _chunk_ranges(spec.numel, self.chunk_elems):
            # Successive draws continue one stream, so values do not depend on how the tensor is chunked.
            values = rng.standard_normal(count, dtype=np.float32) * std
            yield values.astype(ml_dtypes.bfloat16).astype(target, copy=False)


@dataclass(frozen=True)
class ConstantFill:
    """The same value in every element."""

    value: float = 0.0
    chunk_elems: int = DEFAULT_CHUNK_ELEMS

    def __call__(self, spec: TensorSpec) -> Iterator[np.ndarray]:
        target = _target_dtype(spec)
        return self._chunks(spec, target)

    def _chunks(self, spec: TensorSpec, target: np.dtype) -> Iterator[np.ndarray]:
        block = np.full(min(spec.numel, _chunk_size(self.chunk_elems)), self.value, dtype=np.float64).astype(target)
        for _, count in _chunk_ranges(spec.numel, self.chunk_elems):
            yield block[:count]


@dataclass(frozen=True)
class SpecialFill:
    """Runs of ``SPECIAL_BF16`` alternating with runs of random bf16 bit patterns."""

    seed: int = 0
    chunk_elems: int = DEFAULT_CHUNK_ELEMS

    def __call__(self, spec: TensorSpec) -> Iterator[np.ndarray]:
        target = _target_dtype(spec)
        return self._chunks(spec, target, tensor_rng(self.seed, spec.name))

    def _chunks(self, spec: TensorSpec, target: np.dtype, rng: np.random.Generator) -> Iterator[np.ndarray]:
        period = 2 * len(_SPECIAL_BITS)
        for start, count in _chunk_ranges(spec.numel, self.chunk_elems):
            # Four uint16 per raw uint64 draw; chunk starts are multiples of 4, so the stream never skips.
            raw = rng.bit_generator.random_raw((count + 3) // 4).astype("<u8")
            bits = raw.view("<u2")[:count].copy()
            phase = np.arange(start, start + count, dtype=np.int64) % period
            fixed = phase < len(_SPECIAL_BITS)
            bits[fixed] = _SPECIAL_BITS[phase[fixed]]
            # NaN and values past fp16's range are the point of this fill; numpy need not warn about them.
            with np.errstate(invalid="ignore", over="ignore"):
                values = bits.view(ml_dtypes.bfloat16).astype(target, copy=False)
            yield values


_FILLS: dict[str, Callable[..., Fill]] = {
    "normal": lambda seed, value, chunk_elems: NormalFill(seed=seed, chunk_elems=chunk_elems),
    "constant": lambda seed, value, chunk_elems: ConstantFill(value=value, chunk_elems=chunk_elems),
    "special": lambda seed, value, chunk_elems: SpecialFill(seed=seed, chunk_elems=chunk_elems),
}
FILL_KINDS = tuple(_FILLS)


def make_fill(kind: str, *, seed: int = 0, value: float = 0.0, chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> Fill:
    """The fill called ``kind`` (one of ``FILL_KINDS``)."""
    if kind not in _FILLS:
        raise FillError(f"unknown fill {kind!r}; choose one of: {', '.join(FILL_KINDS)}")
    tensor_rng(seed, "")  # check the seed now rather than at the first tensor
    return _FILLS[kind](seed, value, chunk_elems)


def materialize(fill: Fill, spec: TensorSpec) -> np.ndarray:
    """The whole tensor a fill describes, shaped (for tests and small tensors only: it holds every value)."""
    target = _target_dtype(spec)
    chunks = [np.asarray(chunk) for chunk in fill(spec)]
    flat = np.concatenate(chunks) if chunks else np.empty(0, dtype=target)
    return flat.astype(target, copy=False).reshape(spec.shape)


def _target_dtype(spec: TensorSpec) -> np.dtype:
    if spec.dtype not in FILL_DTYPES:
        raise FillError(f"cannot fill tensor {spec.name!r} of dtype {spec.dtype}; fills write {', '.join(FILL_DTYPES)}")
    dtype = numpy_dtype(spec.dtype)
    assert dtype is not None  # every FILL_DTYPES entry has a numpy twin
    return dtype


def _chunk_size(chunk_elems: int) -> int:
    # A multiple of 4 keeps the special fill's raw draws aligned with chunk starts.
    return max(4, chunk_elems - chunk_elems % 4)


def _chunk_ranges(numel: int, chunk_elems: int) -> Iterator[tuple[int, int]]:
    size = _chunk_size(chunk_elems)
    for start in range(0, numel, size):
        yield start, min(size, numel - start)
