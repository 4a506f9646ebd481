"""Property 7, corrupt input: a broken checkpoint is refused with a typed error, quickly, before the device sees it,
and a mutated file that is still valid loads exactly what it now says.

Mutations start from a small valid file written by the safetensors reference library. The reference library is
also the judge: where it refuses the mutated file, the job must end ``error`` with a ``CheckpointError`` subclass
(our validator is stricter in one documented place only: duplicate keys); where it accepts it, the job must load
the oracle's values of the *mutated* file, or refuse, by name, a dtype the loaders do not handle. A job is
never ``ok`` with data the file does not hold.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save

from mali_hil.harness.checkpoints import faults
from mali_hil.harness.checkpoints.format import DTYPE_BITS
from mali_hil.harness.loaders.base import FLOAT_SOURCES, PASSTHROUGH_SOURCES
from mali_hil.harness.records.results import LoadResult, Status

from .conftest import check_oracle, failed, idle_device_bytes

pytestmark = pytest.mark.mali_hil_property("corrupt-input")

JOB_TIMEOUT_S = 60.0
QUICK_S = 10.0  # a refusal reads a header of a few hundred bytes: seconds mean the worker read or waited on more
CHECKPOINT_ERRORS = frozenset(
    name for name, cls in vars(faults).items() if isinstance(cls, type) and issubclass(cls, faults.CheckpointError)
)
LOADABLE = frozenset(FLOAT_SOURCES + PASSTHROUGH_SOURCES)

_rng = np.random.default_rng(20240817)
# c (F32) and a (BF16) are both 64 bytes, so swapping their offsets gives another valid file
VALID = save({
    "a": _rng.standard_normal((4, 8)).astype(ml_dtypes.bfloat16),
    "b": _rng.standard_normal(8).astype(np.float16),
    "c": _rng.standard_normal((2, 8)).astype(np.float32),
})  # fmt: skip
HEADER_END = 8 + int.from_bytes(VALID[:8], "little")
NAMES = ("a", "b", "c")


def _header(data: bytes) -> dict[str, Any] | None:
    try:
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    except (ValueError, UnicodeDecodeError):
        return None
    return header if isinstance(header, dict) else None


def _with_header(data: bytes, text: str) -> bytes:
    """``data`` with its header replaced by ``text``, padded with spaces to a multiple of 8 as writers do."""
    raw = text.encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + data[8 + int.from_bytes(data[:8], "little") :]


# --- mutations: each is a small record (hypothesis prints it) that turns file bytes into other bytes -------------


@dataclass(frozen=True)
class Truncate:
    keep: int

    def __call__(self, data: bytes) -> bytes:
        return data[: self.keep]


@dataclass(frozen=True)
class FlipByte:
    at: int
    mask: int

    def __call__(self, data: bytes) -> bytes:
        if self.at >= len(data):
            return data
        return data[: self.at] + bytes([data[self.at] ^ self.mask]) + data[self.at + 1 :]


@dataclass(frozen=True)
class SetLength:
    value: int

    def __call__(self, data: bytes) -> bytes:
        return self.value.to_bytes(8, "little") + data[8:]


@dataclass(frozen=True)
class Append:
    tail: bytes

    def __call__(self, data: bytes) -> bytes:
        return data + self.tail


@dataclass(frozen=True)
class Edit:
    """Set one field of one header entry (``tensor`` "__metadata__" with ``field`` None: the metadata itself)."""

    tensor: str
    field: str | None
    value: Any

    def __call__(self, data: bytes) -> bytes:
        header = _header(data)
        if header is None:
            return data
        if self.field is None:
            header[self.tensor] = self.value
        elif isinstance(header.get(self.tensor), dict):
            header[self.tensor][self.field] = self.value
        return _with_header(data, json.dumps(header, separators=(",", ":")))


@dataclass(frozen=True)
class SwapOffsets:
    first: str
    second: str

    def __call__(self, data: bytes) -> bytes:
        header = _header(data)
        try:
            one, two = header[self.first]["data_offsets"], header[self.second]["data_offsets"]
        except (KeyError, TypeError):
            return data
        header[self.first]["data_offsets"], header[self.second]["data_offsets"] = two, one
        return _with_header(data, json.dumps(header, separators=(",", ":")))


@dataclass(frozen=True)
class RepeatEntry:
    """The header lists ``tensor`` a second time, identically: the reference reader keeps the last silently."""

    tensor: str

    def __call__(self, data: bytes) -> bytes:
        header = _header(data)
        if header is None or self.tensor not in header:
            return data
        text = json.dumps(header, separators=(",", ":"))
        entry = json.dumps({self.tensor: header[self.tensor]}, separators=(",", ":"))[1:-1]
        return _with_header(data, f"{text[:-1]},{entry}}}")


SHAPES = st.one_of(
    st.sampled_from([[32], [8, 4], [2, 16], [1, 4, 8], [16], [4, 4], [64], []]),
    st.lists(st.integers(0, 2**64 - 1), max_size=3),
)
OFFSETS = st.lists(st.integers(0, 160), min_size=2, max_size=2)
ODD_JSON = st.sampled_from([None, "64", -1, 1.5, [0], [0, 64, 128], {"a": 1}, True])
LENGTHS = st.one_of(
    st.integers(0, len(VALID) + 16), st.integers(HEADER_END - 12, HEADER_END + 4), st.integers(100_000_001, 2**64 - 1)
)
METADATA = st.sampled_from([{"k": 1}, {"k": None}, [], "x", {"format": "pt"}, None])
TENSOR = st.sampled_from(NAMES)
MUTATIONS = st.one_of(
    st.builds(Truncate, st.integers(0, len(VALID) - 1)),
    st.builds(FlipByte, st.integers(0, HEADER_END - 1), st.integers(1, 255)),  # prefix and header
    st.builds(FlipByte, st.integers(HEADER_END, len(VALID) - 1), st.integers(1, 255)),  # tensor bytes
    st.builds(SetLength, LENGTHS),
    st.builds(Append, st.binary(min_size=1, max_size=16)),
    st.builds(Edit, TENSOR, st.just("dtype"), st.sampled_from([*DTYPE_BITS, "bf16", "Q4_0", ""])),
    st.builds(Edit, TENSOR, st.just("shape"), st.one_of(SHAPES, ODD_JSON)),
    st.builds(Edit, TENSOR, st.just("data_offsets"), st.one_of(OFFSETS, ODD_JSON)),
    st.builds(Edit, st.just("__metadata__"), st.none(), METADATA),
    st.builds(SwapOffsets, TENSOR, TENSOR),
    st.builds(RepeatEntry, TENSOR),
)


# --- the judge ---------------------------------------------------------------------------------------------------


def _reference_accepts(path: Path) -> bool:
    try:
        with safe_open(str(path), framework="numpy") as reader:
            reader.keys()
    except Exception:  # the reference library's refusal (SafetensorError, or a Python error on a bad prefix)
        return False
    return True


def _repeats_a_key(data: bytes) -> bool:
    """Whether a JSON object of the header repeats a key (where our validator is stricter than the reference)."""
    repeated = False

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal repeated
        repeated |= len({key for key, _ in items}) < len(items)
        return dict(items)

    try:
        json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")], object_pairs_hook=pairs)
    except (ValueError, UnicodeDecodeError):
        return False
    return repeated


def _judge(load, path: Path, idle: int | None, empty_checkpoint: Path) -> LoadResult:
    """Run the job on ``path`` and hold it to the reference library's verdict on the same file; then check the
    device is back at its ``idle`` bytes."""
    data = path.read_bytes()
    started = time.monotonic()
    result = load(path, timeout_s=JOB_TIMEOUT_S, values=True)
    elapsed = time.monotonic() - started
    if _reference_accepts(path) and not (_repeats_a_key(data) and result.error_type == "DuplicateKeyError"):
        _judge_valid(result, path, data)
        what = "loading a valid mutated file"
    else:
        assert result.status is Status.ERROR and result.error_type in CHECKPOINT_ERRORS, (
            f"the reference refuses this file; the job must end 'error' with a CheckpointError: {failed(result)}"
        )
        assert elapsed < QUICK_S, f"refusing a {len(data)}-byte file took {elapsed:.1f} s"
        # the worker refuses before measuring (no figures, None); where it reports them, nothing may have changed
        for figure in (result.device_live_before, result.device_peak_bytes, result.device_live_after):
            assert figure in (None, idle), f"{result.loader}: the device went from {idle} to {figure} bytes"
        what = "the refused job"
    if idle is not None:
        after = idle_device_bytes(load, empty_checkpoint)
        assert after == idle, f"{result.loader}: {idle} live device bytes before {what}, {after} after it"
    return result


def _judge_valid(result: LoadResult, path: Path, data: bytes) -> None:
    """A file the reference accepts loads to the oracle's values of that file, or is refused naming a dtype the
    loaders do not handle (F8, F64, ...)."""
    header = _header(data) or {}
    dtypes = {entry.get("dtype") for name, entry in header.items() if name != "__metadata__"}
    unloadable = sorted(str(d) for d in dtypes - LOADABLE)
    if unloadable and result.status is Status.ERROR:
        named = any(d in (result.error_message or "") for d in unloadable)
        assert named, f"a valid file refused without naming its unloadable dtype {unloadable}: {failed(result)}"
    else:  # ok, with the mutated file's own values (not the original's, not garbage); F16 sources bit for bit
        f16 = [name for name, entry in header.items() if isinstance(entry, dict) and entry.get("dtype") == "F16"]
        check_oracle(result, path, exact=f16)


def _apply(mutations: list[Any] | tuple[Any, ...]) -> bytes:
    data = VALID
    for mutate in mutations:
        data = mutate(data)
    return data


# --- the tests ---------------------------------------------------------------------------------------------------

# (id, mutations, what the job must end with: a CheckpointError name, or "ok")
NAMED = [
    ("empty-file", [Truncate(0)], "HeaderTooSmallError"),
    ("prefix-cut", [Truncate(7)], "HeaderTooSmallError"),
    ("prefix-too-large", [SetLength(100_000_001)], "HeaderTooLargeError"),
    ("prefix-u64-max", [SetLength(2**64 - 1)], "HeaderTooLargeError"),
    ("prefix-past-end", [SetLength(len(VALID))], "InvalidHeaderLengthError"),
    ("header-cut", [Truncate(HEADER_END - 20)], "InvalidHeaderLengthError"),
    ("prefix-one-short", [SetLength(HEADER_END - 9)], "MetadataIncompleteBufferError"),
    ("not-utf8", [FlipByte(9, 0x80)], "InvalidHeaderError"),
    ("not-json", [FlipByte(8, 0x01)], "InvalidHeaderDeserializationError"),
    ("unknown-dtype", [Edit("a", "dtype", "BF17")], "UnknownDtypeError"),
    ("float-in-shape", [Edit("a", "shape", [4, 8.0])], "InvalidHeaderDeserializationError"),
    ("negative-offset", [Edit("b", "data_offsets", [-1, 16])], "InvalidHeaderDeserializationError"),
    ("metadata-not-strings", [Edit("__metadata__", None, {"k": 1})], "InvalidMetadataError"),
    ("offset-gap", [Edit("b", "data_offsets", [129, 145])], "InvalidOffsetError"),
    ("shape-overflow", [Edit("a", "shape", [2**63, 4])], "ValidationOverflowError"),
    ("shape-too-big", [Edit("a", "shape", [4, 9])], "TensorInvalidInfoError"),
    ("data-cut", [Truncate(len(VALID) - 1)], "MetadataIncompleteBufferError"),
    ("garbage-appended", [Append(b"\0" * 8)], "MetadataIncompleteBufferError"),
    ("key-repeated", [RepeatEntry("b")], "DuplicateKeyError"),
    # still valid: the job must load what the file now says
    ("offsets-swapped", [SwapOffsets("a", "c")], "ok"),
    ("bf16-read-as-f16", [Edit("a", "dtype", "F16")], "ok"),
    ("shape-transposed", [Edit("a", "shape", [8, 4])], "ok"),
    ("tensor-byte-flipped", [FlipByte(len(VALID) - 3, 0x41)], "ok"),
]


def test_named_corruptions(load, loader_name: str, tmp_path: Path, empty_checkpoint: Path) -> None:
    """One mutation per rule of the format (``NAMED``), each judged by the reference library and checked for its
    error class; every case runs and the failures are reported together, by case. Catches: a check missing from the
    validator (the loader then reads past the file, or loads garbage); the wrong rule reported; a loader that reads
    tensors in header order instead of at their offsets (swapped), that assumes every float is bf16 (dtype edit),
    that caches by path or ignores the header's shape."""
    idle = idle_device_bytes(load, empty_checkpoint)
    problems = []
    for case, mutations, outcome in NAMED:
        path = tmp_path / f"{case}.safetensors"
        path.write_bytes(_apply(mutations))
        try:
            result = _judge(load, path, idle, empty_checkpoint)
            assert (result.error_type or "ok") == outcome, f"expected {outcome}: {failed(result)}"
        except AssertionError as exc:
            problems.append(f"{case}: {exc}".splitlines()[0])
            idle = idle_device_bytes(load, empty_checkpoint)  # the next case starts where this one left the device
    assert not problems, f"{len(problems)} of {len(NAMED)} cases:\n" + "\n".join(problems)


def test_random_corruptions(load, loader_name: str, tmp_path_factory: pytest.TempPathFactory,
                            empty_checkpoint: Path) -> None:  # fmt: skip
    """Hypothesis stacks 1-3 mutations (truncation, byte flips in header and data, length prefixes, JSON edits of
    dtype/shape/offsets/metadata, swapped offsets, repeated entries, appended bytes). Catches what the named cases
    do, in combinations no one wrote down: e.g. a validator that trusts the prefix once the JSON parses, a
    sort of tensors by offset that breaks on equal starts, a parser that accepts what serde_json refuses."""

    @given(mutations=st.lists(MUTATIONS, min_size=1, max_size=3))
    def check(mutations: list[Any]) -> None:
        path = tmp_path_factory.mktemp("corrupt") / "mutated.safetensors"
        path.write_bytes(_apply(mutations))
        # measured per example: the worker outlives examples, so a leak of one must not be blamed on the next
        _judge(load, path, idle_device_bytes(load, empty_checkpoint), empty_checkpoint)

    check()
