"""Property 1, numerics: every variant's tensors equal the oracle's conversion of the checkpoint.

Checkpoints are written with the safetensors reference library and the expected values computed with ml_dtypes
(mali_hil.harness.values.oracles), so no mali-hil code stands on both sides of a comparison. bf16 -> fp16 includes ties,
subnormals, overflow to inf, -0, and NaN (compared by class and sign, never by payload). Every float source
(BF16, F16, F32) goes through one rule (conftest ``check_values``): exact, except that a device which emulates
half may flush fp16 subnormals to a zero of their sign, which makes the test xfail, never pass. F16 sources are
copied, never converted, so they must come back bit for bit everywhere.

Hypothesis runs inside each test (an inner ``@given``), so a flush is collected over all examples and reported
once as an xfail after them; an xfail raised inside ``@given`` would be taken for a failure and shrunk, re-running
load jobs for nothing.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from safetensors.numpy import save_file

from mali_hil.harness.plugin.session import SESSION_KEY
from mali_hil.harness.records.results import LoadResult
from mali_hil.harness.values.oracles import convert, expected_tensors

from .checks import OOM_STATUSES
from .conftest import check_oracle, check_values, compare, failed, fp16_subnormal, oracle_target

pytestmark = pytest.mark.mali_hil_property("numerics")

SOURCES = {"bfloat16": (ml_dtypes.bfloat16, np.uint16), "float16": (np.float16, np.uint16),
           "float32": (np.float32, np.uint32)}  # fmt: skip


def _write(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    save_file(tensors, str(path))
    return path


def _check(result: LoadResult, tensors: dict[str, np.ndarray]) -> int:
    """Every tensor against ``convert`` of what was written; returns the flushed count (F16 sources may not)."""
    assert result.ok, failed(result)
    assert sorted(result.digests) == sorted(tensors), f"{result.loader} loaded {sorted(result.digests)}"
    target = oracle_target(result)
    return sum(
        check_values(name, result.array(name), convert(values, target), result, may_flush=values.dtype != np.float16)
        for name, values in tensors.items()
    )


def _xfail_if_flushed(flushed: int, result: LoadResult) -> None:
    if flushed:
        # Everything in fp16's normal range was exact; only edge values (subnormals, 65504, NaN) came back as
        # tinygrad's emulated half makes them. A real Mali has native fp16: recorded, not hidden.
        why = result.fp16.describe()
        pytest.xfail(f"{flushed} fp16 edge values changed by emulated half in {result.loader}: {why}")


def test_exhaustive_bf16_to_fp16(load, loader_name: str, tmp_path: Path) -> None:
    """All 65,536 bf16 bit patterns in one tensor: catches truncation instead of round-to-nearest-even, ties
    rounded away from even, -0 turned into +0, overflow saturated at 65504 instead of inf, NaN turned into inf."""
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).reshape(256, 256)
    tensors = {"w": bits.view(ml_dtypes.bfloat16)}
    result = load(_write(tmp_path / "all-bf16.safetensors", tensors), values=True)
    _xfail_if_flushed(_check(result, tensors), result)


# float32 bit patterns where F32 -> fp16 can go wrong (each also with its sign flipped)
F32_EDGES = {
    0x7F800001: "NaN with only the lowest payload bit: must stay NaN, not become inf",
    0x7FBFFFFF: "signalling NaN, every payload bit but the quiet one",
    0x7F802000: "NaN whose payload survives dropping 13 bits",
    0x7FC00000: "quiet NaN",
    0x7F800000: "inf",
    0x7F7FFFFF: "max float32: overflows to inf",
    0x477FEFFF: "just below 65520: rounds down to 65504",
    0x477FF000: "65520: the tie between 65504 and 65536 rounds to even, i.e. inf",
    0x3F801000: "1 + 2^-11: tie, rounds to even 1.0",
    0x3F803000: "1 + 3*2^-11: tie, rounds to even 1 + 2^-9",
    0x3F801001: "just above a tie: rounds up",
    0x38800000: "2^-14: smallest fp16 normal",
    0x387FF000: "just below 2^-14: rounds up to the smallest normal",
    0x33000000: "2^-25: tie, rounds to even 0",
    0x33000001: "just above 2^-25: rounds up to 2^-24",
    0x33C00000: "1.5*2^-24: tie, rounds to even 2^-23",
    0x00000001: "smallest float32 subnormal: becomes 0",
    0x00000000: "zero (its negative: -0 must stay -0)",
}


def test_f32_edge_cases(load, loader_name: str, tmp_path: Path) -> None:
    """F32 -> fp16 at its edges (``F32_EDGES``), each of them with both signs. Catches: NaN payloads in the low
    13 bits dropped so NaN becomes inf; overflow decided before rounding (65519.99 -> inf) or after it wrongly
    (65520 -> 65504); ties rounded away from even; subnormal ties; -0 lost."""
    bits = np.array(list(F32_EDGES), dtype=np.uint32)
    tensors = {"w": np.stack([bits, bits | np.uint32(0x80000000)]).view(np.float32)}
    result = load(_write(tmp_path / "f32-edges.safetensors", tensors), values=True)
    _xfail_if_flushed(_check(result, tensors), result)


def test_random_bf16_tensors(load, loader_name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Random bf16 patterns in a few shapes: catches a conversion that depends on an element's position (a tail
    handled apart from whole vectors, rows mixed up when a tensor is reshaped)."""
    flushed, last = 0, None

    @given(
        bits=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=300).map(lambda v: np.array(v, dtype=np.uint16)),
        rows=st.sampled_from([1, 2, 3]),
    )
    def check(bits: np.ndarray, rows: int) -> None:
        nonlocal flushed, last
        tensors = {"w": np.resize(bits, (rows, max(1, bits.size // rows))).view(ml_dtypes.bfloat16)}
        path = _write(tmp_path_factory.mktemp("numerics") / "random.safetensors", tensors)
        last = load(path, values=True)
        flushed += _check(last, tensors)

    check()
    if last is not None:
        _xfail_if_flushed(flushed, last)


def test_every_float_source(load, loader_name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Random bit patterns of each float source next to each other in one file, each compared value by value:
    F16 must be bit-exact (a loader that round-trips F16 through a float32 cast on an emulated device flushes its
    subnormals, and that is a failure); F32 rounds once to fp16 (catches truncating the mantissa, or going
    F32 -> bf16 -> fp16 and rounding twice); BF16 as above. Also catches a loader that picks the conversion by
    tensor name or position instead of by each tensor's own dtype."""
    flushed, last = 0, None

    @given(seed=st.integers(0, 2**32 - 1), order=st.permutations(sorted(SOURCES)))
    def check(seed: int, order: list[str]) -> None:
        nonlocal flushed, last
        rng = np.random.default_rng(seed)
        tensors = {}
        for i, name in enumerate(order):
            dtype, uint = SOURCES[name]
            raw = rng.integers(0, np.iinfo(uint).max, size=(4, 33), dtype=uint, endpoint=True)
            tensors[f"t{i}_{name}"] = raw.view(dtype)
            tensors[f"t{i}_{name}_row"] = raw[0].copy().view(dtype)
        last = load(_write(tmp_path_factory.mktemp("numerics") / "floats.safetensors", tensors), values=True)
        flushed += _check(last, tensors)

    check()
    if last is not None:
        _xfail_if_flushed(flushed, last)


def test_variants_agree(load, request: pytest.FixtureRequest, make_checkpoint) -> None:
    """Every loader of the session loads the same ``special``-fill model and the digests agree pairwise.

    Variants that store no half from a kernel must agree bit for bit; where two differ, every differing element
    must be an fp16 subnormal that one side flushed to its signed zero on an fp16-emulated device (then xfail).
    Catches a variant that drifts from the others on a value class one oracle test might miss (a whole model:
    embedding, norms, head, many shapes), or returns other tensors, shapes or dtypes than the rest. A variant
    that keeps floats as stored (tinygrad-nn) is checked against the oracle only: its bf16 is not the others' fp16.
    """
    from mali_hil.harness.loaders import get_loader

    loaders = [name for name in request.config.stash[SESSION_KEY].loaders if not get_loader(name).keeps_float_dtype]
    if len(loaders) < 2:
        pytest.skip(f"needs two loaders that convert floats to compare; the session has {loaders}")
    checkpoint = make_checkpoint("tiny", fill="special")
    results = {name: load(checkpoint, loader=name, values=True) for name in loaders}
    flushed = {name: check_oracle(result, checkpoint) for name, result in results.items()}
    want = expected_tensors(checkpoint)
    disagreements = []
    for (a, ra), (b, rb) in itertools.combinations(results.items(), 2):
        for name in sorted(want):
            if ra.digests[name] == rb.digests[name]:
                continue
            differs, _ = compare(ra.array(name), rb.array(name))
            beyond = differs & ~fp16_subnormal(want[name].reshape(-1))
            assert not beyond.any(), f"{a} and {b} disagree on {name} at {int(beyond.sum())} non-subnormal values"
            disagreements.append(f"{a}/{b} on {name}: {int(differs.sum())}")
    exact = [name for name, count in flushed.items() if not count]
    for a, b in itertools.combinations(exact, 2):
        assert results[a].digests == results[b].digests, f"{a} and {b} both match the oracle but not each other"
    if disagreements:
        lossy = sorted(name for name, count in flushed.items() if count)
        pytest.xfail(f"only fp16 subnormals differ, flushed by {', '.join(lossy)}; {'; '.join(disagreements[:4])}")


def test_long_tensors_cross_chunks_and_windows(load, loader_name: str, tmp_path: Path) -> None:
    """Tensors longer than a streaming loader's conversion window (mmap converts 2^20 elements per launch) and
    than its chunk, with lengths that are multiples of nothing: catches a lost or doubled tail, a window that
    starts at the wrong element, or a chunk boundary converted twice."""
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 1 << 16, size=1_500_007, dtype=np.uint64).astype(np.uint16)
    tensors = {"long": bits.view(ml_dtypes.bfloat16).reshape(1, -1), "odd": bits[:300_001].view(np.float16)}
    path = _write(tmp_path / "long.safetensors", tensors)
    for chunk_bytes in (64 << 20, 1_000_000):  # one chunk per tensor, then many (odd-sized) chunks
        result = load(path, values=True, chunk_bytes=chunk_bytes)
        _xfail_if_flushed(_check(result, tensors), result)


def test_tensors_past_every_chunk_and_window(loader_name: str, past_every_chunk: Path, past_every_chunk_job) -> None:
    """Tensors larger than the default 64 MiB chunk and than any conversion window (conftest ``past_every_chunk``:
    BF16 and F16 of 66 MiB, F32 of 17 MiB), loaded at the default chunk in the job memory-bound measures; each
    digest, read back after the memory figures were taken, against the oracle's, streamed from the reference reader
    in bounded memory. Catches: a last chunk never written at the default chunk size; a fixed-size conversion
    window or staging buffer whose overflow is dropped; a chunk written at the wrong offset or twice; a tail lost
    in the copied (F16) path or at the end of a 1-D tensor."""
    _, result = past_every_chunk_job
    if result.status in OOM_STATUSES:
        pytest.skip(f"{result.device} cannot hold {past_every_chunk.name} with {loader_name}: {result.status.value}"
                    " (memory-bound judges whether it should)")  # fmt: skip
    check_oracle(result, past_every_chunk)
