"""What a correct load must produce, computed without any of mali-hil's loading code.

The values come from the safetensors reference library (not our reader) and the conversion from ml_dtypes
(not tinygrad): bf16 -> float32 is exact, float32 -> float16 rounds once to nearest-even, so the pair is the
independent oracle for bf16 -> fp16 (REFERENCE section 5). Digests use mali_hil.harness.values.digest, which only
hashes.

Digests are streamed: each tensor is read through the reference reader's slices, ``BLOCK_BYTES`` of source at a
time, converted and hashed block by block (the conversion is per element, so blocks change nothing). The oracle
then needs a few blocks of RAM whatever the tensor's size, so tensors far past any loader's chunk can be checked
on a machine that could not hold them twice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from mali_hil.harness.records.results import TensorDigest
from mali_hil.harness.values.digest import Digest

_TARGETS = {"float16": np.float16, "float32": np.float32}
#: the target of a loader that keeps floats as stored (``Loader.keeps_float_dtype``): nothing is converted
STORED = "stored"
#: source bytes read, converted and hashed at once: with its float32 step and the hash's copies, ~6x this in RAM
BLOCK_BYTES = 8 << 20
# the reference reader names dtypes, not sizes; an unknown one is taken as the widest, which only shrinks blocks
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
             "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}  # fmt: skip


def convert(values: np.ndarray, target_dtype: str = "float16") -> np.ndarray:
    """Floating tensors end in ``target_dtype`` (bf16 via an exact float32 step; ``STORED``: as they are); others
    are kept as they are."""
    if target_dtype == STORED:
        return values
    if values.dtype == ml_dtypes.bfloat16 or values.dtype.kind == "f":
        target = _TARGETS[target_dtype]
        if values.dtype == target:
            return values
        with np.errstate(over="ignore"):  # overflow to inf is the correct result
            return values.astype(np.float32).astype(target)
    return values


def _files(checkpoint: Path) -> list[Path]:
    if checkpoint.name.endswith(".index.json"):
        import json

        weight_map = json.loads(checkpoint.read_text())["weight_map"]
        return sorted({checkpoint.parent / name for name in weight_map.values()})
    return [checkpoint]


def expected_tensors(checkpoint: str | Path, keys: Iterable[str] | None = None,
                     target_dtype: str = "float16") -> dict[str, np.ndarray]:  # fmt: skip
    """The converted values of ``keys`` (all tensors by default), read with the reference library."""
    from safetensors import safe_open

    wanted = None if keys is None else set(keys)
    out: dict[str, np.ndarray] = {}
    for path in _files(Path(checkpoint)):
        with safe_open(str(path), framework="numpy") as reader:
            for name in reader.keys():  # noqa: SIM118 - safe_open is not a mapping
                if wanted is None or name in wanted:
                    out[name] = convert(reader.get_tensor(name), target_dtype)
    return out


def expected_digests(checkpoint: str | Path, keys: Iterable[str] | None = None,
                     target_dtype: str = "float16") -> dict[str, TensorDigest]:  # fmt: skip
    """The digests of ``expected_tensors``, in bounded memory (see the module docstring)."""
    from safetensors import safe_open

    wanted = None if keys is None else set(keys)
    out: dict[str, TensorDigest] = {}
    for path in _files(Path(checkpoint)):
        with safe_open(str(path), framework="numpy") as reader:
            for name in reader.keys():  # noqa: SIM118 - safe_open is not a mapping
                if wanted is None or name in wanted:
                    out[name] = _streamed_digest(reader, name, target_dtype)
    return out


def _streamed_digest(reader: Any, name: str, target_dtype: str) -> TensorDigest:
    piece = reader.get_slice(name)
    shape = tuple(piece.get_shape())
    if math.prod(shape) == 0 or not shape:  # nothing to stream: no elements, or one (a 0-d tensor cannot be sliced)
        values = convert(reader.get_tensor(name), target_dtype)
        digest = Digest()
        digest.update(values)
        return TensorDigest(values.dtype.name, shape, digest.hexdigest(), digest.nbytes)
    digest, dtype = Digest(), None
    for block in _blocks(piece, shape, _ITEMSIZE.get(piece.get_dtype(), 8)):
        values = convert(block, target_dtype)
        digest.update(values)
        dtype = values.dtype
    assert dtype is not None  # a tensor with elements has at least one block
    return TensorDigest(dtype.name, shape, digest.hexdigest(), digest.nbytes)


def _blocks(piece: Any, shape: tuple[int, ...], itemsize: int) -> Iterator[np.ndarray]:
    """A tensor's values in C order, in reads of at most ``BLOCK_BYTES``. Trailing dimensions that fit a block are
    read whole, the dimension before them in runs of indices, and any dimension before that one index at a time."""
    inner, cut = 1, len(shape)
    while cut > 0 and inner * shape[cut - 1] * itemsize <= BLOCK_BYTES:
        cut -= 1
        inner *= shape[cut]
    if cut == 0:
        yield piece[:]
        return
    step = max(1, BLOCK_BYTES // (inner * itemsize))
    for outer in np.ndindex(*shape[: cut - 1]):
        for start in range(0, shape[cut - 1], step):
            yield piece[(*(slice(i, i + 1) for i in outer), slice(start, min(start + step, shape[cut - 1])))]


def bf16_to_fp16_bits(bits: np.ndarray) -> np.ndarray:
    """uint16 bf16 patterns -> uint16 fp16 patterns, through ml_dtypes."""
    with np.errstate(over="ignore"):  # overflow to inf is the correct result, not a problem
        return bits.astype(np.uint16).view(ml_dtypes.bfloat16).astype(np.float32).astype(np.float16).view(np.uint16)
