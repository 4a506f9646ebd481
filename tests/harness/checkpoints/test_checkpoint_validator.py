"""The strict validator: one broken file per check, edge cases, and random mutations, each cross-checked
against the reference reader (the ``safetensors`` package), so our validator is never stricter than the
format except where documented (duplicate JSON keys; tensor entries written as arrays)."""

from __future__ import annotations

import json
import os
import pickle
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from mali_hil.harness.checkpoints import CheckpointError, validate, validate_checkpoint
from mali_hil.harness.checkpoints.faults import (
    FORMAT_ERRORS,
    CheckpointNotFoundError,
    DuplicateKeyError,
    HeaderTooLargeError,
    HeaderTooSmallError,
    IndexFormatError,
    IndexTensorMissingError,
    InvalidHeaderDeserializationError,
    InvalidHeaderError,
    InvalidHeaderLengthError,
    InvalidMetadataError,
    InvalidOffsetError,
    MetadataIncompleteBufferError,
    MisalignedSliceError,
    ShardMissingError,
    TensorInvalidInfoError,
    UnindexedTensorError,
    UnknownDtypeError,
    ValidationOverflowError,
)
from mali_hil.harness.checkpoints.format import DTYPE_BITS, MAX_JSON_DEPTH

U64_MAX = 2**64 - 1


def file_bytes(header: dict[str, Any] | bytes, buffer: bytes = b"", *, length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + buffer


def entry(dtype: str, shape: list[int], start: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


def reference_reads(path: Path) -> tuple[bool, str]:
    """Whether the reference library opens the file, and its error message if not."""
    try:
        with safe_open(path, "np") as handle:
            handle.keys()
    except Exception as exc:  # the reference library raises its own SafetensorError
        return False, str(exc)
    return True, ""


VALID = {
    "__metadata__": {"format": "pt"},
    "w": entry("F32", [2, 2], 0, 16),
    "b": entry("BF16", [3], 16, 22),
}
VALID_BUFFER = bytes(22)

# One file per check, each breaking exactly that check; with the phrase the reference reader's error uses
# (None: the reference reader accepts the file; see the class docstring for why we refuse it).
BROKEN: dict[type[CheckpointError], tuple[bytes, str | None]] = {
    HeaderTooSmallError: (b"\x10\x00\x00\x00", "header too small"),
    HeaderTooLargeError: (struct.pack("<Q", 100_000_001) + b"{}", "header too large"),
    InvalidHeaderLengthError: (file_bytes(VALID, VALID_BUFFER, length=10_000), "invalid header length"),
    InvalidHeaderError: (file_bytes(b'{"w\xff":1}'), "invalid UTF-8"),
    InvalidHeaderDeserializationError: (file_bytes(b'{"w": {"dtype": "F32",}}'), "invalid JSON"),
    InvalidOffsetError: (file_bytes({"w": entry("F32", [2, 2], 0, 16), "b": entry("BF16", [3], 18, 24)}, bytes(24)),
                         "invalid offset for tensor `b`"),
    ValidationOverflowError: (file_bytes({"w": entry("F32", [2**40, 2**40], 0, 16)}, bytes(16)), "overflow"),
    MisalignedSliceError: (file_bytes({"w": entry("F4", [3], 0, 2)}, bytes(2)), "byte boundary"),
    TensorInvalidInfoError: (file_bytes({"w": entry("F32", [2, 3], 0, 16)}, bytes(16)), "invalid shape, data type"),
    MetadataIncompleteBufferError: (file_bytes(VALID, VALID_BUFFER + b"\x00"), "incomplete metadata"),
    DuplicateKeyError: (file_bytes(b'{"w": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},'
                                   b' "w": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}', b"xx"), None),
    UnknownDtypeError: (file_bytes({"w": entry("F12", [2], 0, 3)}, bytes(3)), "unknown variant `F12`"),
    InvalidMetadataError: (file_bytes({"__metadata__": {"epoch": 3}, "w": entry("U8", [1], 0, 1)}, b"x"),
                           "expected a string"),
}  # fmt: skip


def test_every_format_check_has_a_broken_file() -> None:
    assert set(BROKEN) == set(FORMAT_ERRORS)


@pytest.mark.parametrize("error", FORMAT_ERRORS, ids=lambda cls: cls.__name__)
def test_each_check_fires_with_its_own_class_and_the_reference_agrees(tmp_path: Path, error: type) -> None:
    data, reference_phrase = BROKEN[error]
    path = tmp_path / "broken.safetensors"
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as caught:
        validate(path)
    assert type(caught.value) is error
    assert caught.value.path == path
    assert str(path) in str(caught.value) and caught.value.need in str(caught.value)
    accepted, message = reference_reads(path)
    if reference_phrase is None:
        assert accepted, "documented as stricter than the reference: it should accept this file"
    else:
        assert not accepted and reference_phrase in message, message


def test_the_valid_base_file_is_valid_for_both(tmp_path: Path) -> None:
    path = tmp_path / "valid.safetensors"
    path.write_bytes(file_bytes(VALID, VALID_BUFFER))
    info = validate(path)
    assert info.names == ("w", "b") and info.metadata == {"format": "pt"} and info.tensor_bytes == 22
    assert reference_reads(path) == (True, "")


def test_errors_carry_numbers_and_survive_pickling(tmp_path: Path) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(BROKEN[TensorInvalidInfoError][0])
    with pytest.raises(TensorInvalidInfoError) as caught:
        validate(path)
    err = caught.value
    assert (err.tensor, err.expected, err.actual) == ("w", 24, 16)
    assert "'w'" in str(err) and "24" in str(err) and "16" in str(err)
    assert isinstance(err, ValueError)
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is TensorInvalidInfoError and str(copy) == str(err)
    assert (copy.path, copy.tensor, copy.expected, copy.actual) == (path, "w", 24, 16)


def _deep(depth: int) -> bytes:
    # top-level object + tensor object + (depth - 2) nested arrays in an ignored extra field
    nested = b"[" * (depth - 2) + b"]" * (depth - 2)
    return b'{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], "x": ' + nested + b"}}"


# Header edge cases where Python's json and serde_json differ, or the format allows odd things.
_JSON = (InvalidHeaderDeserializationError, "invalid JSON")
_DTYPE = (UnknownDtypeError, "unknown variant")
_DUP = (DuplicateKeyError, "duplicate field")
_OVERFLOW = (ValidationOverflowError, "overflow")
_OFFSET = (InvalidOffsetError, "invalid offset")
REFUSED_BY_BOTH: dict[str, tuple[bytes, tuple[type[CheckpointError], str]]] = {
    "NaN literal": (file_bytes(b'{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], "x": NaN}}', b"x"), _JSON),
    "number overflows a double": (
        file_bytes(b'{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], "x": -1E400}}', b"x"),
        _JSON,
    ),
    "lone surrogate in a name": (
        file_bytes(b'{"w\\ud800": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}', b"x"),
        _JSON,
    ),
    "lone surrogate in a value": (file_bytes(b'{"__metadata__": {"k": "\\udc00"}}'), _JSON),
    "-0 in a shape": (file_bytes(b'{"w": {"dtype": "U8", "shape": [-0], "data_offsets": [0, 0]}}'), _JSON),
    "float in a shape": (file_bytes(b'{"w": {"dtype": "U8", "shape": [1.0], "data_offsets": [0, 1]}}', b"x"), _JSON),
    "bool in a shape": (file_bytes(b'{"w": {"dtype": "U8", "shape": [true], "data_offsets": [0, 1]}}', b"x"), _JSON),
    "dim above u64": (file_bytes({"w": entry("U8", [2**64, 0], 0, 0)}), _JSON),
    "offset above u64": (file_bytes({"w": entry("U8", [1], 0, 2**64)}, b"x"), _JSON),
    "three offsets": (file_bytes(b'{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1, 1]}}', b"x"), _JSON),
    "missing shape": (file_bytes(b'{"w": {"dtype": "U8", "data_offsets": [0, 1]}}', b"x"), _JSON),
    "dtype not a string": (file_bytes(b'{"w": {"dtype": 8, "shape": [1], "data_offsets": [0, 1]}}', b"x"), _JSON),
    "lowercase dtype": (file_bytes({"w": entry("bf16", [1], 0, 2)}, b"xx"), _DTYPE),
    "header is an array": (file_bytes(b"[]"), _JSON),
    "empty header": (file_bytes(b""), _JSON),
    "byte order mark": (file_bytes(b"\xef\xbb\xbf{}"), _JSON),
    "trailing NUL padding": (file_bytes(b"{}\x00\x00\x00\x00\x00\x00"), _JSON),
    "form feed whitespace": (file_bytes(b"\x0c{}"), _JSON),
    "repeated field inside a tensor": (
        file_bytes(b'{"w": {"dtype": "U8", "dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}', b"x"),
        _DUP,
    ),
    "repeated __metadata__": (file_bytes(b'{"__metadata__": {}, "__metadata__": {}}'), _DUP),
    "__metadata__ is a string": (file_bytes(b'{"__metadata__": "pt"}'), (InvalidMetadataError, "expected a map")),
    "too deep": (file_bytes(_deep(MAX_JSON_DEPTH + 1), b"x"), _JSON),
    "first tensor not at 0": (file_bytes({"w": entry("U8", [0], 2, 2)}, b"xx"), _OFFSET),
    "end before start": (file_bytes({"a": entry("U8", [2], 0, 2), "b": entry("U8", [0], 2, 1)}, b"xx"), _OFFSET),
    "two tensors on the same bytes": (
        file_bytes({"a": entry("U8", [2], 0, 2), "b": entry("U8", [2], 0, 2)}, b"xx"),
        _OFFSET,
    ),
    "element count overflows": (file_bytes({"w": entry("U8", [U64_MAX, 2], 0, 0)}), _OVERFLOW),
    "bit size overflows": (file_bytes({"w": entry("U16", [2**63], 0, 0)}), _OVERFLOW),
}


def _every_dtype_file() -> bytes:
    header, position = {}, 0
    for name, bits in DTYPE_BITS.items():
        size = bits  # 8 elements of `bits` bits
        header[f"t_{name}"] = entry(name, [8], position, position + size)
        position += size
    return file_bytes(header, bytes(position))


ACCEPTED_BY_BOTH: dict[str, bytes] = {
    "no tensors": file_bytes(b"{}"),
    "JSON whitespace around": file_bytes(b" \t\r\n{} \n"),
    "empty and 0-rank tensors": file_bytes({"e": entry("F32", [0, 5], 0, 0), "s": entry("F64", [], 0, 8)}, bytes(8)),
    "offsets out of JSON order": file_bytes({"b": entry("U8", [1], 2, 3), "a": entry("U8", [2], 0, 2)}, b"xyz"),
    "extra fields in a tensor entry": file_bytes(
        b'{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], "note": {"x": [null, 1.5, -2e3, 1e300]}}}', b"x"
    ),
    "null __metadata__": file_bytes({"__metadata__": None, "w": entry("U8", [1], 0, 1)}, b"x"),
    "escaped names": file_bytes(b'{"\\u005f_metadata__": {"a": "b"}, "\\ud83d\\ude00": '
                                b'{"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}', b"x"),
    "empty and odd names": file_bytes({"": entry("U8", [1], 0, 1), "__metadata__x": entry("U8", [1], 1, 2)}, b"xy"),
    "deepest allowed nesting": file_bytes(_deep(MAX_JSON_DEPTH), b"x"),
    "u64 max dim times zero": file_bytes({"w": entry("U8", [U64_MAX, 0], 0, 0)}),
    "sub-byte dtypes filling whole bytes": file_bytes(
        {"a": entry("F4", [2, 3], 0, 3), "b": entry("F6_E2M3", [4], 3, 6)}, bytes(6)
    ),
    "NaN and inf values": file_bytes({"w": entry("F32", [2], 0, 8)}, struct.pack("<2f", float("nan"), float("inf"))),
    "every dtype": _every_dtype_file(),
}  # fmt: skip


@pytest.mark.parametrize("name", list(REFUSED_BY_BOTH))
def test_edge_cases_refused_by_both(tmp_path: Path, name: str) -> None:
    path = tmp_path / "edge.safetensors"
    data, (error, reference_phrase) = REFUSED_BY_BOTH[name]
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as caught:
        validate(path)
    assert type(caught.value) is error
    accepted, message = reference_reads(path)
    assert not accepted and reference_phrase in message, message


@pytest.mark.parametrize("name", list(ACCEPTED_BY_BOTH))
def test_edge_cases_accepted_by_both(tmp_path: Path, name: str) -> None:
    path = tmp_path / "edge.safetensors"
    path.write_bytes(ACCEPTED_BY_BOTH[name])
    info = validate(path)
    assert reference_reads(path) == (True, "")
    with safe_open(path, "np") as handle:
        assert set(handle.keys()) == set(info.names)


def test_documented_differences_from_the_reference_reader(tmp_path: Path) -> None:
    path = tmp_path / "diff.safetensors"
    # Repeated tensor name: the reference keeps the last silently; we refuse.
    path.write_bytes(file_bytes(b'{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},'
                                b' "w": {"dtype": "I8", "shape": [1], "data_offsets": [0, 1]}}', b"x"))  # fmt: skip
    with pytest.raises(DuplicateKeyError):
        validate(path)
    with safe_open(path, "np") as handle:
        assert handle.get_slice("w").get_dtype() == "I8"
    # Repeated key inside __metadata__: same story.
    path.write_bytes(file_bytes(b'{"__metadata__": {"k": "a", "k": "b"}}'))
    with pytest.raises(DuplicateKeyError):
        validate(path)
    with safe_open(path, "np") as handle:
        assert handle.metadata() == {"k": "b"}
    # A tensor entry as a [dtype, shape, offsets] array: serde takes it, tinygrad's safe_load cannot.
    path.write_bytes(file_bytes(b'{"w": ["U8", [1], [0, 1]]}', b"x"))
    with pytest.raises(InvalidHeaderDeserializationError):
        validate(path)
    assert reference_reads(path)[0]


def test_validation_reads_only_the_header_of_a_64_gib_file(tmp_path: Path) -> None:
    size = 64 * 2**30
    path = tmp_path / "huge.safetensors"
    head = file_bytes({"w": entry("BF16", [size // 2 // 4096, 4096], 0, size)})
    path.write_bytes(head)
    os.truncate(path, len(head) + size)  # sparse: reading the buffer would take long (and 64 GiB of RAM)
    started = time.monotonic()
    info = validate(path)
    assert time.monotonic() - started < 1.0
    assert info.tensor_bytes == size and info.file_size == len(head) + size


def test_missing_file_is_a_usage_error_not_a_bad_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError):
        validate(tmp_path / "absent.safetensors")
    with pytest.raises(CheckpointNotFoundError):
        validate_checkpoint(tmp_path / "absent.safetensors")
    assert not issubclass(CheckpointNotFoundError, CheckpointError)


# --- sharded checkpoints --------------------------------------------------------------------------------------------


def _write_shards(folder: Path, shards: dict[str, dict[str, int]], weight_map: dict[str, str] | str) -> Path:
    """Write U8 shards ({file: {tensor: size}}) and an index; return the index path."""
    folder.mkdir(exist_ok=True)
    for shard, tensors in shards.items():
        header, position = {}, 0
        for name, size in tensors.items():
            header[name] = entry("U8", [size], position, position + size)
            position += size
        (folder / shard).write_bytes(file_bytes(header, bytes(position)))
    index = folder / "model.safetensors.index.json"
    text = weight_map if isinstance(weight_map, str) else json.dumps({"metadata": {}, "weight_map": weight_map})
    index.write_text(text)
    return index


SHARDS = {"s1.safetensors": {"a": 2, "b": 3}, "s2.safetensors": {"c": 4}}
GOOD_MAP = {"a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors"}

SHARD_CASES: dict[str, tuple[dict[str, dict[str, int]], dict[str, str] | str, type[CheckpointError]]] = {
    "shard file missing": (SHARDS, {**GOOD_MAP, "d": "s3.safetensors"}, ShardMissingError),
    "index key not in its shard": (SHARDS, {**GOOD_MAP, "d": "s2.safetensors"}, IndexTensorMissingError),
    "shard key not in index": (SHARDS, {"a": "s1.safetensors", "c": "s2.safetensors"}, UnindexedTensorError),
    "tensor stored in two shards": ({**SHARDS, "s2.safetensors": {"c": 4, "a": 2}}, GOOD_MAP, UnindexedTensorError),
    "index not JSON": (SHARDS, '{"weight_map": {', IndexFormatError),
    "no weight_map": (SHARDS, '{"metadata": {}}', IndexFormatError),
    "repeated key in weight_map": (
        SHARDS,
        '{"weight_map": {"a": "s1.safetensors", "a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors"}}',
        IndexFormatError,
    ),
    "shard outside the folder": (SHARDS, {**GOOD_MAP, "c": "../s2.safetensors"}, IndexFormatError),
    "shard name not a string": (SHARDS, '{"weight_map": {"a": 1}}', IndexFormatError),
}


def test_valid_sharded_checkpoint(tmp_path: Path) -> None:
    index = _write_shards(tmp_path / "ck", SHARDS, GOOD_MAP)
    checkpoint = validate_checkpoint(index)
    assert checkpoint.total_bytes == 9 and checkpoint.index == index
    assert {name: path.name for name, (path, _) in checkpoint.tensors.items()} == GOOD_MAP
    assert validate_checkpoint(tmp_path / "ck") == checkpoint


@pytest.mark.parametrize("case", list(SHARD_CASES))
def test_sharded_checkpoint_errors(tmp_path: Path, case: str) -> None:
    shards, weight_map, error = SHARD_CASES[case]
    index = _write_shards(tmp_path / "ck", shards, weight_map)
    with pytest.raises(CheckpointError) as caught:
        validate_checkpoint(index)
    assert type(caught.value) is error
    assert caught.value.path == index and str(index) in str(caught.value)


def test_a_broken_shard_reports_the_shard(tmp_path: Path) -> None:
    index = _write_shards(tmp_path / "ck", SHARDS, GOOD_MAP)
    shard = tmp_path / "ck" / "s2.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1])
    with pytest.raises(MetadataIncompleteBufferError) as caught:
        validate_checkpoint(index)
    assert caught.value.path == shard


def test_a_folder_must_hold_one_checkpoint(tmp_path: Path) -> None:
    for name in ("a.safetensors", "b.safetensors"):
        (tmp_path / name).write_bytes(file_bytes(b"{}"))
    with pytest.raises(CheckpointNotFoundError, match=r"a\.safetensors, b\.safetensors"):
        validate_checkpoint(tmp_path)


# --- random mutations of a valid file ---------------------------------------------------------------------------------

BASE_HEADER = {
    "__metadata__": {"format": "pt", "k": "v"},
    "w": entry("F32", [2, 3], 0, 24),
    "h": entry("BF16", [4], 24, 32),
    "e": entry("U8", [0], 32, 32),
    "s": entry("I64", [], 32, 40),
}
BASE = file_bytes(BASE_HEADER, bytes(range(40)))
HEADER_END = len(BASE) - 40

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 64),
    st.sampled_from([2**32, 2**63, U64_MAX, 2**64, -(2**63)]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=4),
)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=6)
field_values = {
    "dtype": st.one_of(st.sampled_from([*DTYPE_BITS, "bf16", "F12", ""]), json_scalars),
    "shape": st.one_of(st.lists(st.one_of(st.integers(0, 8), st.sampled_from([2**32, 2**62, U64_MAX])), max_size=3),
                       json_values),
    "data_offsets": st.one_of(st.lists(st.integers(0, 48), min_size=2, max_size=2), json_values),
}  # fmt: skip


@st.composite
def json_edit(draw: st.DrawFn) -> bytes:
    header = json.loads(json.dumps(BASE_HEADER))
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(["w", "h", "e", "s"]))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        header[name][field] = draw(field_values[field])
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.one_of(json_values, st.dictionaries(st.text(max_size=2), json_scalars)))
    buffer_size = draw(st.sampled_from([40, 32, 48, 0]))
    return file_bytes(json.dumps(header).encode(), bytes(buffer_size))


def _flip(data: bytes, positions: list[int], masks: list[int]) -> bytes:
    out = bytearray(data)
    for position, mask in zip(positions, masks, strict=False):
        out[position % HEADER_END] ^= mask
    return bytes(out)


mutations: st.SearchStrategy[bytes] = st.one_of(
    st.integers(0, len(BASE) - 1).map(lambda n: BASE[:n]),
    st.builds(_flip, st.just(BASE), st.lists(st.integers(0, HEADER_END - 1), min_size=1, max_size=3),
              st.lists(st.integers(1, 255), min_size=1, max_size=3)),
    st.one_of(st.integers(0, U64_MAX), st.integers(-16, 16).map(lambda d: max(0, HEADER_END - 8 + d)))
      .map(lambda n: struct.pack("<Q", n) + BASE[8:]),
    json_edit(),
    st.binary(min_size=1, max_size=8).map(lambda extra: BASE + extra),
    st.tuples(st.integers(8, HEADER_END), st.sampled_from(list(b'{}[],:" 0-9eE.\\ntuflsaxX\x00\xff')))
      .map(lambda at: _insert_in_header(at[0], at[1])),
)  # fmt: skip


def _insert_in_header(position: int, byte: int) -> bytes:
    raw = BASE[8:HEADER_END]
    raw = raw[: position - 8] + bytes([byte]) + raw[position - 8 :]
    return file_bytes(raw, BASE[HEADER_END:])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mutations") / "mutant.safetensors"


@settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutations)
def test_mutations_are_refused_with_a_checkpoint_error_or_valid_for_both(scratch: Path, data: bytes) -> None:
    scratch.write_bytes(data)
    ours: CheckpointError | None = None
    try:
        info = validate(scratch)
    except CheckpointError as exc:  # any other exception type fails the test
        ours = exc
    accepted, message = reference_reads(scratch)
    event(f"ours: {type(ours).__name__ if ours else 'valid'}; reference: {'valid' if accepted else 'refused'}")
    if ours is None:
        assert accepted, f"we accepted a file the reference refuses: {message}"
        with safe_open(scratch, "np") as handle:
            assert set(handle.keys()) == set(info.names)
            for tensor in info.tensors:
                view = handle.get_slice(tensor.name)
                assert (view.get_dtype(), tuple(view.get_shape())) == (tensor.dtype, tensor.shape)
            assert handle.metadata() == (None if info.metadata is None else dict(info.metadata))
    elif accepted:
        assert isinstance(ours, DuplicateKeyError), f"stricter than the reference without a documented reason: {ours!r}"
