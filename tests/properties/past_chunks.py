"""A checkpoint whose tensors are larger than every chunk and conversion window a loader may use: the default chunk
(64 MiB of source, ``DEFAULT_CHUNK_BYTES``), mmap's window (2^20 elements) and any fixed staging buffer up to
16 MiB. Its one measured job per loader serves two properties: memory-bound judges the job's figures, numerics
its digests (read back after the figures were taken) against the oracle's, streamed in bounded memory.

Every value is an fp16 normal well inside the range (magnitudes 2^-12 to 2^15), away from the edges where emulated
half is known to deviate (conftest ``compare``), so every variant, device half included, must match bit for bit
and a digest suffices; the edges are the small numerics tests' business. No value is zero, so a region a loader
never writes (fresh memory reads as zeros) cannot pass. Signs, exponents and mantissas are random, so a block
written at another offset or twice changes the digest too.

Written with the safetensors reference library: 156 MB on disk, 147 MB on the device, 1-3 s per job here.
"""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from mali_hil.harness.records.jobs import DEFAULT_CHUNK_BYTES

#: (rows, 1000) elements of 2 bytes: two default chunks, the second a partial one of 1,053 rows; 16 MiB windows
#: (8,388,608 bf16 elements) end mid-row
ROWS, COLS = 34_607, 1000
#: float32 source past a 16 MiB window, 1-D and of a length that is a multiple of nothing
F32_LENGTH = 4_500_001
#: the largest fixed conversion buffer the tensors must outgrow (wrong_loaders.fixed_window has one this size)
LARGEST_WINDOW_BYTES = 16 << 20
SEED = 11


def _bits(rng: np.random.Generator, count: int, exponent_bits: int, mantissa_bits: int) -> np.ndarray:
    """``count`` bit patterns of a binary float format: random sign and mantissa, magnitude in [2^-12, 2^15)."""
    uint = np.uint16 if 1 + exponent_bits + mantissa_bits == 16 else np.uint32
    bias = (1 << (exponent_bits - 1)) - 1
    exponent = rng.integers(bias - 12, bias + 15, size=count, dtype=uint)
    mantissa = rng.integers(0, 1 << mantissa_bits, size=count, dtype=uint)
    sign = rng.integers(0, 2, size=count, dtype=uint)
    return (sign << (exponent_bits + mantissa_bits)) | (exponent << mantissa_bits) | mantissa


def tensors() -> dict[str, np.ndarray]:
    """BF16 (the converted path) and F16 (the copied path) past the default chunk, F32 past a 16 MiB window."""
    rng = np.random.default_rng(SEED)
    bf16 = _bits(rng, ROWS * COLS, 8, 7).view(ml_dtypes.bfloat16).reshape(ROWS, COLS)
    f16 = _bits(rng, ROWS * COLS, 5, 10).view(np.float16).reshape(ROWS, COLS)
    f32 = _bits(rng, F32_LENGTH, 8, 23).view(np.float32)
    return {"past_chunk.bf16": bf16, "past_chunk.f16": f16, "past_window.f32": f32}


def write(path: Path) -> Path:
    values = tensors()
    for name in ("past_chunk.bf16", "past_chunk.f16"):  # the premise, should the default chunk ever grow
        assert values[name].nbytes > DEFAULT_CHUNK_BYTES, f"{name} fits one default chunk of {DEFAULT_CHUNK_BYTES}"
    assert values["past_window.f32"].nbytes > LARGEST_WINDOW_BYTES
    save_file(values, str(path))
    return path
