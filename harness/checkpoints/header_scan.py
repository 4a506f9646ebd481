"""A valid header read entry by entry, so its JSON never exists whole as Python objects.

``json.loads`` of a safetensors header holds the whole document as dicts and lists, about ten bytes of RAM per
header byte (a 100 MB header: 4 GB and 43 s were reported; inside a job, a 15 MB header was ``oom-killed`` on a
256 MiB board). Here the top-level object is walked by hand, each tensor's small entry decoded with the same
serde-like hooks as the full parse and turned into a :class:`TensorInfo` at once, and let go.

Only for headers that pass: on anything unusual (a duplicate name, a malformed byte, a bad entry) this returns
None and :func:`parse_header` parses the whole document the old way, which finds that error and names it exactly
as before. So the two paths can differ only in speed and memory, never in what is accepted or which error is
raised.
"""

from __future__ import annotations

import json
from json.decoder import scanstring  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any

from mali_hil.harness.checkpoints.format import (
    METADATA_KEY,
    Header,
    TensorInfo,
    check_json_values,
    json_decoder,
    metadata_of,
    parse_header,
    tensor_info,
)

_SPACE = json.decoder.WHITESPACE.match  # type: ignore[attr-defined]


def read_header(raw: bytes, path: str | Path) -> Header:
    """:func:`parse_header`'s answer, in memory that is a small multiple of the tensors' count, not of the JSON."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return parse_header(raw, path)  # it names the byte
    header = _scan(text, path)
    return header if header is not None else parse_header(raw, path)


def _scan(text: str, path: str | Path) -> Header | None:
    decoder = json_decoder(path)
    names: set[str] = set()
    tensors: list[TensorInfo] = []
    metadata: Any = None
    try:
        at = _SPACE(text, 0).end()
        if text[at : at + 1] != "{":
            return None
        at = _SPACE(text, at + 1).end()
        closed = text[at : at + 1] == "}"
        while not closed:
            if text[at : at + 1] != '"':
                return None
            name, at = scanstring(text, at + 1, True)
            at = _SPACE(text, at).end()
            if text[at : at + 1] != ":" or name in names:
                return None
            value, at = decoder.raw_decode(text, _SPACE(text, at + 1).end())
            names.add(name)
            if not (name.isascii() and _plain(value)):
                check_json_values({name: value}, path)  # the entry as one level below the document
            if name == METADATA_KEY:
                metadata = metadata_of(value, path)
            else:
                tensors.append(tensor_info(name, value, path))
            at = _SPACE(text, at).end()
            closed = text[at : at + 1] == "}"
            if not closed:
                if text[at : at + 1] != ",":
                    return None
                at = _SPACE(text, at + 1).end()
        if _SPACE(text, at + 1).end() != len(text):
            return None
    except Exception:  # any doubt: the full parse decides, and says why
        return None
    return Header(tuple(tensors), metadata)


def _plain(entry: Any) -> bool:
    """A tensor's entry as writers make it (ASCII strings, flat lists of integers): nothing for the nesting and
    surrogate checks to find, so the per-value walk (half the time of a big header) is skipped."""
    if type(entry) is not dict:
        return False
    for key, value in entry.items():
        if not key.isascii():
            return False
        if type(value) is str:
            if not value.isascii():
                return False
        elif type(value) is list:
            if any(type(item) is not int for item in value):
                return False
        elif type(value) is not int:
            return False
    return True
