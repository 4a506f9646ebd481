"""What a correct load must produce, computed without any of mali-hil's loading code.

The values come from the safetensors reference library (not our reader) and the conversion from ml_dtypes
(not tinygrad): bf16 -> float32 is exact, float32 -> float16 rounds once to nearest-even, so the pair is the
independent oracle for bf16 -> fp16 (REFERENCE section 5). Digests use mali_hil.harness.digest, which only hashes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import ml_dtypes
import numpy as np

from mali_hil.harness.digest import digest_array
from mali_hil.harness.results import TensorDigest

_TARGETS = {"float16": np.float16, "float32": np.float32}


def convert(values: np.ndarray, target_dtype: str = "float16") -> np.ndarray:
    """Floating tensors end in ``target_dtype`` (bf16 via an exact float32 step); others are kept as they are."""
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
    return {
        name: TensorDigest(v.dtype.name, tuple(v.shape), digest_array(v), v.nbytes)
        for name, v in expected_tensors(checkpoint, keys, target_dtype).items()
    }


def bf16_to_fp16_bits(bits: np.ndarray) -> np.ndarray:
    """uint16 bf16 patterns -> uint16 fp16 patterns, through ml_dtypes."""
    with np.errstate(over="ignore"):  # overflow to inf is the correct result, not a problem
        return bits.astype(np.uint16).view(ml_dtypes.bfloat16).astype(np.float32).astype(np.float16).view(np.uint16)
