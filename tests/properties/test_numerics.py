"""Property 1, numerics: every variant's tensors equal the oracle's conversion of the checkpoint.

Checkpoints are written with the safetensors reference library and the expected values computed with ml_dtypes
(harness.oracles), so no mali-hil code stands on both sides of a comparison. bf16 -> fp16 includes ties,
subnormals, overflow to inf, -0, and NaN (compared by class and sign, never by payload).
"""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from safetensors.numpy import save_file

from harness.oracles import bf16_to_fp16_bits, expected_digests
from harness.results import LoadResult, Status

pytestmark = pytest.mark.mali_hil_property("numerics")

FP16_SUBNORMAL_OR_ZERO = 0x7C00  # fp16 exponent bits: zero exponent = subnormal or zero


def _write(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    save_file(tensors, str(path))
    return path


def _compare_fp16(name: str, got: np.ndarray, source_bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mismatches anywhere, mismatches whose expected value is an fp16 subnormal); NaN by class and sign."""
    want = bf16_to_fp16_bits(source_bits.reshape(-1))
    got_bits = got.reshape(-1).view(np.uint16)
    want_nan = np.isnan(want.view(np.float16))
    got_nan = np.isnan(got_bits.view(np.float16))
    same = np.where(want_nan, got_nan & ((got_bits >> 15) == (want >> 15)), got_bits == want)
    bad = ~same
    subnormal = ((want & FP16_SUBNORMAL_OR_ZERO) == 0) & ((want & 0x3FF) != 0)
    return bad, bad & subnormal


def _check_bits(result: LoadResult, tmp_name: str, bits: np.ndarray) -> None:
    assert result.status is Status.OK, f"{result.status.value}: {result.error_type}: {result.error_message}"
    got = result.array(tmp_name)
    bad, bad_subnormal = _compare_fp16(tmp_name, got, bits)
    if bad.any() and bad.sum() == bad_subnormal.sum() and "emulated" in result.fp16:
        # Everything else is exact; only fp16 subnormals differ, on a backend where tinygrad emulates half (its
        # float route flushes them). A real Mali has native fp16: recorded, not hidden.
        pytest.xfail(f"{int(bad.sum())} fp16 subnormals lost by {result.loader}: {result.fp16}")
    index = np.flatnonzero(bad)[:8]
    source = [hex(int(b)) for b in bits.reshape(-1)[index]]
    wrong = [hex(int(g)) for g in got.reshape(-1).view(np.uint16)[index]]
    assert not bad.any(), f"{int(bad.sum())} of {bits.size} values differ from ml_dtypes, e.g. bf16 {source} -> {wrong}"


def test_exhaustive_bf16_to_fp16(load, loader_name: str, tmp_path: Path) -> None:
    """All 65,536 bf16 bit patterns in one tensor."""
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).reshape(256, 256)
    path = _write(tmp_path / "all-bf16.safetensors", {"w": bits.view(ml_dtypes.bfloat16)})
    _check_bits(load(path, values=True), "w", bits)


@given(
    bits=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=300).map(lambda v: np.array(v, dtype=np.uint16)),
    rows=st.sampled_from([1, 2, 3]),
)
def test_random_bf16_tensors(load, loader_name: str, tmp_path_factory: pytest.TempPathFactory,
                             bits: np.ndarray, rows: int) -> None:  # fmt: skip
    bits = np.resize(bits, (rows, max(1, bits.size // rows)))
    path = _write(tmp_path_factory.mktemp("numerics") / "random.safetensors", {"w": bits.view(ml_dtypes.bfloat16)})
    _check_bits(load(path, values=True), "w", bits)


@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(["float16", "float32"]))
def test_unconverted_dtypes_are_exact(load, loader_name: str, tmp_path_factory: pytest.TempPathFactory,
                                      seed: int, dtype: str) -> None:  # fmt: skip
    """F16 sources stay bit-exact; F32 sources round once to fp16 (checked against the oracle's digests)."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 2 ** (8 * np.dtype(dtype).itemsize), size=(4, 33), dtype=np.uint64)
    values = raw.astype({"float16": np.uint16, "float32": np.uint32}[dtype]).view(dtype)
    path = _write(tmp_path_factory.mktemp("numerics") / "plain.safetensors", {"w": values, "b": values[0].copy()})
    result = load(path)
    assert result.status is Status.OK, f"{result.status.value}: {result.error_type}: {result.error_message}"
    assert result.digests == expected_digests(path)
