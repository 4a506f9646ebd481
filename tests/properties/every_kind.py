"""A checkpoint holding every kind of tensor a real one does, for the dtypes property (test_dtypes.py).

Real checkpoints are not only floating weights: Llama's HF files carry I64 ``position_ids``, GPTQ/AWQ
quantized ones U8/I8 packed weights and zero-points beside F16 scales and I32 ``g_idx`` indices, others BOOL
attention masks, 0-d scalars (a stored scale, a rope theta) and empty tensors. Every dtype the loaders keep
(``PASSTHROUGH_SOURCES``) and every float they convert (``FLOAT_SOURCES``) appears in a layer and outside one,
with a 0-d and an empty tensor of each, so a node's shard selection meets them too.

Integer values use every bit of their type (random patterns: a high bit or a sign lost by narrowing shows), bools
are 0 and 1 at random, floats are normal values well inside fp16's range (their edges are the numerics property's
business), never zero, so a tensor a loader never writes (fresh memory reads as zeros) cannot pass. Written with
the safetensors reference library: a few KiB.
"""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from mali_hil.harness.loaders.base import FLOAT_SOURCES, PASSTHROUGH_SOURCES

SEED = 28
LAYERS = 3
#: safetensors dtype -> numpy dtype, for the dtypes a loader must handle (keep or convert)
NUMPY = {"BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "U16": np.uint16, "I32": np.int32,
         "U32": np.uint32, "I64": np.int64, "U64": np.uint64, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
         "F32": np.float32}  # fmt: skip
#: dtypes the format defines that no variant loads: each job naming one is refused with a LoaderError saying so
REFUSED = ("F64", "F8_E4M3", "F8_E5M2")
REFUSED_NUMPY = {"F64": np.float64, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2}
#: the shapes every dtype comes in: a matrix, a 0-d scalar, an empty tensor, and a 1-d one of an odd length
SHAPES = {"matrix": (5, 7), "scalar": (), "empty": (0, 4), "vector": (13,)}


def values(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Random values of a safetensors ``dtype`` (see the module docstring for which)."""
    count = int(np.prod(shape, dtype=np.int64))
    if dtype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    target = np.dtype(NUMPY.get(dtype) or REFUSED_NUMPY[dtype])
    if dtype in FLOAT_SOURCES or dtype in REFUSED:
        magnitude = np.exp2(rng.uniform(-10, 10, size=count)) * rng.choice([-1.0, 1.0], size=count)
        return magnitude.astype(np.float32).astype(target).reshape(shape)
    raw = rng.integers(0, 256, size=count * target.itemsize, dtype=np.uint8)
    return raw.view(target).reshape(shape)


def tensors() -> dict[str, np.ndarray]:
    """Every kept and converted dtype in every ``SHAPES`` entry, in each of ``LAYERS`` layers and outside them."""
    rng = np.random.default_rng(SEED)
    out = {}
    for prefix in [f"model.layers.{i}." for i in range(LAYERS)] + ["model.extra."]:
        for dtype in (*PASSTHROUGH_SOURCES, *FLOAT_SOURCES):
            for kind, shape in SHAPES.items():
                out[f"{prefix}{dtype.lower()}_{kind}"] = values(rng, dtype, shape)
    return out


def write(path: Path) -> Path:
    save_file(tensors(), str(path))
    return path


def write_refused(path: Path, dtype: str) -> Path:
    """A valid file of a few BF16 tensors and one tensor of ``dtype`` (one of ``REFUSED``)."""
    rng = np.random.default_rng(SEED)
    save_file({"model.layers.0.w": values(rng, "BF16", (4, 4)), f"model.layers.0.{dtype.lower()}":
               values(rng, dtype, (3, 2))}, str(path))  # fmt: skip
    return path
