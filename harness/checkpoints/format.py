"""The safetensors format as data: dtypes, tensor records, and parsing of the JSON header.

Layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the byte buffer. The JSON
maps tensor names to ``{"dtype", "shape", "data_offsets"}`` (offsets relative to the buffer) and may hold
a ``"__metadata__"`` string-to-string map. Checks on the prefix and the offsets live in ``validate.py``;
this module turns header bytes into records and refuses what cannot be parsed.

The parser mirrors what the reference reader (Rust, serde_json) accepts, not just what Python's ``json``
accepts: no NaN/Infinity literals, no numbers that overflow a double, no lone UTF-16 surrogates, at most
127 levels of nesting, and integers in shapes and offsets must be plain non-negative 64-bit integers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from mali_hil.harness.checkpoints.faults import (
    DuplicateKeyError,
    InvalidHeaderDeserializationError,
    InvalidHeaderError,
    InvalidMetadataError,
    UnknownDtypeError,
)

U64_MAX = 2**64 - 1
METADATA_KEY = "__metadata__"
# serde_json's default recursion limit: 127 nested arrays/objects parse, 128 do not (measured on 0.8).
MAX_JSON_DEPTH = 127

#: Bits per element of every dtype the reference reader knows (0.8), in its order. The first fifteen are
#: the classic set; F4/F6 are sub-byte (a tensor must still fill whole bytes) and C64 is complex64.
DTYPE_BITS: Mapping[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}

# Sub-byte dtypes have no one-element-per-byte numpy twin, so they cannot be viewed as arrays.
_NUMPY_DTYPES: Mapping[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu),
    "F8_E4M3FNUZ": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "F8_E5M2FNUZ": np.dtype(ml_dtypes.float8_e5m2fnuz),
    "I16": np.dtype("<i2"),
    "U16": np.dtype("<u2"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I32": np.dtype("<i4"),
    "U32": np.dtype("<u4"),
    "F32": np.dtype("<f4"),
    "C64": np.dtype("<c8"),
    "F64": np.dtype("<f8"),
    "I64": np.dtype("<i8"),
    "U64": np.dtype("<u8"),
}


def numpy_dtype(dtype: str) -> np.dtype | None:
    """The numpy (or ml_dtypes) dtype that reads ``dtype``'s bytes, or None for sub-byte dtypes."""
    if dtype not in DTYPE_BITS:
        raise KeyError(f"unknown safetensors dtype {dtype!r}; known: {', '.join(DTYPE_BITS)}")
    return _NUMPY_DTYPES.get(dtype)


@dataclass(frozen=True)
class TensorSpec:
    """A tensor to be written: its name, safetensors dtype and shape (data comes from a fill)."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BITS[self.dtype] // 8


@dataclass(frozen=True, slots=True)  # slots: a 100 MB header holds 1.4 million of them
class TensorInfo:
    """One tensor as a header describes it; ``start``/``end`` are offsets into the byte buffer."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def spec(self) -> TensorSpec:
        return TensorSpec(self.name, self.dtype, self.shape)


@dataclass(frozen=True)
class Header:
    """A parsed header: tensors in the order the JSON lists them, and ``__metadata__`` (None if absent)."""

    tensors: tuple[TensorInfo, ...]
    metadata: Mapping[str, str] | None


def parse_header(raw: bytes, path: str | Path) -> Header:
    """Parse header bytes into a ``Header``; raise the matching ``CheckpointError`` if they are not one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidHeaderError(path, f"header byte {exc.start} is not valid UTF-8 ({exc.reason})") from None
    doc = _load_json(text, path)
    del text
    check_json_values(doc, path)
    if not isinstance(doc, dict):
        raise InvalidHeaderDeserializationError(path, f"header is a JSON {_json_type(doc)}, not an object")
    metadata = metadata_of(doc.get(METADATA_KEY), path)
    tensors = []
    for name in list(doc):  # each entry's JSON is let go once it is a TensorInfo: the two never add up
        entry, doc[name] = doc[name], None
        if name != METADATA_KEY:
            tensors.append(tensor_info(name, entry, path))
    return Header(tuple(tensors), metadata)


def encode_header(
    tensors: tuple[TensorInfo, ...], metadata: Mapping[str, str] | None, aligned: bool | None = None
) -> bytes:
    """Header bytes for ``tensors``, padded with spaces to a multiple of 8 (as reference writers do). ``aligned``
    pads 8 more where needed so that the data section starts at a multiple of 16 bytes of the file (True) or 8
    bytes past one (False): tinygrad copies a source that is not 16-byte aligned through host memory, so the two
    cost loaders differently. None leaves it to the header's length, as any writer does."""
    doc: dict[str, Any] = {}
    if metadata is not None:
        doc[METADATA_KEY] = dict(metadata)
    for info in tensors:
        doc[info.name] = {"dtype": info.dtype, "shape": list(info.shape), "data_offsets": [info.start, info.end]}
    raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    if aligned is not None and ((8 + len(raw)) % 16 == 0) != aligned:  # 8: the length prefix
        raw += b" " * 8
    return raw


# --- JSON, the way serde_json reads it -----------------------------------------------------------------------


def unique_keys(duplicate: Callable[[str], Exception]) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    """A ``json.loads`` object hook that raises ``duplicate(key)`` for a key seen twice in one object (Python's
    json silently keeps the last one)."""

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in pairs:
            if key in obj:
                raise duplicate(key)
            obj[key] = value
        return obj

    return hook


def json_decoder(path: str | Path) -> json.JSONDecoder:
    """Python's JSON decoder with serde_json's rules for numbers and duplicate keys (errors name ``path``)."""

    def duplicate(key: str) -> Exception:
        return DuplicateKeyError(path, f"JSON key {_show(key)} appears twice in one object", tensor=key)

    return json.JSONDecoder(object_pairs_hook=unique_keys(duplicate), parse_constant=_refuse_constant,
                            parse_float=_finite_float, parse_int=_integer)  # fmt: skip


def _load_json(text: str, path: str | Path) -> Any:
    try:
        return json_decoder(path).decode(text)
    except DuplicateKeyError:
        raise
    except RecursionError:
        raise InvalidHeaderDeserializationError(path, "header JSON is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, our hooks, and Python's int digit limit
        raise InvalidHeaderDeserializationError(path, f"header is not valid JSON ({exc})") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _integer(text: str) -> int | float:
    # serde_json reads "-0" as the float -0.0, which is not a valid size or offset.
    if text == "-0":
        return -0.0
    value = int(text)
    if value > U64_MAX or value < -(1 << 63):  # serde_json reads it as an f64: past f64's range it is refused
        try:
            float(value)
        except OverflowError:
            raise ValueError(f"number {text[:40]}... is out of range") from None
    return value


def check_json_values(doc: Any, path: str | Path) -> None:
    """Refuse what Python's json accepts but serde_json does not: deep nesting and lone surrogates. Walks with one
    iterator per open container (not every child pushed at once: 1.4 million of them in a 100 MB header)."""
    if isinstance(doc, str):
        _check_string(doc, path)
    if not isinstance(doc, dict | list):
        return
    stack: list[tuple[Any, int]] = [(_children(doc), 2)]  # the children's depth: the document is at depth 1
    while stack:
        items, depth = stack[-1]
        item = next(items, None)
        if item is None:
            stack.pop()
            continue
        key, value = item
        if isinstance(key, str):
            _check_string(key, path)
        if isinstance(value, str):
            _check_string(value, path)
        elif isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise InvalidHeaderDeserializationError(path, f"header JSON nests deeper than {MAX_JSON_DEPTH} levels",
                                                        expected=MAX_JSON_DEPTH, actual=depth)  # fmt: skip
            stack.append((_children(value), depth + 1))


def _children(value: dict[str, Any] | list[Any]) -> Any:
    return iter(value.items()) if isinstance(value, dict) else enumerate(value)


def _check_string(value: str, path: str | Path) -> None:
    if value.isascii():
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidHeaderDeserializationError(
            path, f"header string {_show(value)} holds a lone UTF-16 surrogate escape"
        ) from None


# --- schema ---------------------------------------------------------------------------------------------------


def metadata_of(value: Any, path: str | Path) -> Mapping[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidMetadataError(path, f'"{METADATA_KEY}" is a JSON {_json_type(value)}, not an object')
    for key, item in value.items():
        if not isinstance(item, str):
            raise InvalidMetadataError(
                path, f'"{METADATA_KEY}" entry {_show(key)} is a JSON {_json_type(item)}, not a string'
            )
    return value


def tensor_info(name: str, entry: Any, path: str | Path) -> TensorInfo:
    # The reference reader (through serde) also takes a 3-element array here; tinygrad's safe_load does not.
    if not isinstance(entry, dict):
        raise InvalidHeaderDeserializationError(
            path, f"tensor {_show(name)} is described by a JSON {_json_type(entry)}, not an object", tensor=name
        )
    for field in ("dtype", "shape", "data_offsets"):
        if field not in entry:
            raise InvalidHeaderDeserializationError(path, f"tensor {_show(name)} has no {field!r}", tensor=name)
    dtype = entry["dtype"]
    if not isinstance(dtype, str):
        raise InvalidHeaderDeserializationError(
            path, f"tensor {_show(name)} dtype is a JSON {_json_type(dtype)}, not a string", tensor=name
        )
    if dtype not in DTYPE_BITS:
        raise UnknownDtypeError(path, f"tensor {_show(name)} has unknown dtype {_show(dtype)}", tensor=name)
    shape = _u64_list(entry["shape"], name, "shape", path)
    offsets = _u64_list(entry["data_offsets"], name, "data_offsets", path)
    if len(offsets) != 2:
        raise InvalidHeaderDeserializationError(
            path, f"tensor {_show(name)} data_offsets has {len(offsets)} numbers, not 2", tensor=name
        )
    return TensorInfo(name, dtype, tuple(shape), offsets[0], offsets[1])


def _u64_list(value: Any, name: str, field: str, path: str | Path) -> list[int]:
    if not isinstance(value, list):
        raise InvalidHeaderDeserializationError(
            path, f"tensor {_show(name)} {field} is a JSON {_json_type(value)}, not an array", tensor=name
        )
    for item in value:
        # bool is an int in Python but not in JSON; floats (even 2.0) are not sizes for serde.
        if type(item) is not int or not 0 <= item <= U64_MAX:
            raise InvalidHeaderDeserializationError(
                path, f"tensor {_show(name)} {field} holds {_show(item)}, not an unsigned 64-bit integer", tensor=name
            )
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _show(value: Any, limit: int = 60) -> str:
    """repr() cut short: a header may hold megabyte-long strings."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
