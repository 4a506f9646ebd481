"""A sparse checkpoint whose last tensors lie past 2^31 and 2^32 bytes of its file, without writing or reading
gigabytes: Llama-3-8B's first shard is 4.98 GB, so a loader with 32-bit file offsets fails on every 7-8B model and
on none of the small checkpoints a suite makes.

Layer 0 holds two U8 tensors of just over 2 GiB each (packed quantized weights, say): they are holes of the file
(``seek`` past them, never written), so they take no disk and read as zeros. Layer 1's tensors, of several
dtypes and shapes, lie after the first hole (past 2^31) and after the second (past 2^32), with random values,
none zero: a loader that reads them at a wrapped offset reads zeros from a hole and is caught. The node holding
layer 1 (shard 1-1, the last of two) loads only what lies after the holes; the oracle (the safetensors reference
reader, which maps the file) reads only those tensors too, so no page of a hole is ever read by the test.

The header is written here by hand with ``json`` (the reference writer cannot leave holes); the reference reader
accepting it is checked by the oracle's own read.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np

SEED = 4
HOLE_BYTES = (1 << 31) + 4099  # each hole alone passes 2^31; both pass 2^32
HOLES = ("model.layers.0.mlp.gate_proj.qweight", "model.layers.0.mlp.up_proj.qweight")
_DTYPES = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32, "I64": np.int64, "U8": np.uint8,
           "BOOL": np.bool_}  # fmt: skip


def _tensors(rng: np.random.Generator, where: str) -> dict[str, np.ndarray]:
    floats = np.exp2(rng.uniform(-8, 8, size=64 * 33)) * rng.choice([-1.0, 1.0], size=64 * 33)
    return {
        f"model.layers.1.{where}.weight": floats.astype(np.float32).astype(ml_dtypes.bfloat16).reshape(64, 33),
        f"model.layers.1.{where}.scales": floats[:17].astype(np.float16),
        f"model.layers.1.{where}.theta": floats[:1].astype(np.float32).reshape(()),
        f"model.layers.1.{where}.ids": rng.integers(1, 1 << 62, size=9, dtype=np.int64),
        f"model.layers.1.{where}.mask": np.ones(5, dtype=np.bool_),
    }


def layout() -> list[tuple[str, str, tuple[int, ...], np.ndarray | None]]:
    """(name, dtype, shape, values or None for a hole), in file order."""
    rng = np.random.default_rng(SEED)
    order: list[tuple[str, str, tuple[int, ...], np.ndarray | None]] = [(HOLES[0], "U8", (HOLE_BYTES,), None)]
    for where, hole in (("past_2gib", HOLES[1]), ("past_4gib", None)):
        for name, values in _tensors(rng, where).items():
            dtype = next(key for key, numpy in _DTYPES.items() if values.dtype == np.dtype(numpy))
            order.append((name, dtype, values.shape, values))
        if hole:
            order.append((hole, "U8", (HOLE_BYTES,), None))
    return order


def loaded_keys() -> list[str]:
    """What the node holding layer 1 loads: every tensor but the holes."""
    return [name for name, _, _, values in layout() if values is not None]


def write(path: Path) -> Path:
    """The sparse file: header, then each written tensor at its offset; holes are skipped and the size set last."""
    entries, position = {}, 0
    for name, dtype, shape, values in layout():
        size = HOLE_BYTES if values is None else values.nbytes
        entries[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [position, position + size]}
        position += size
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    start = 8 + len(header)
    with path.open("wb") as out:
        out.write(len(header).to_bytes(8, "little") + header)
        for name, _, _, values in layout():
            if values is not None:
                out.seek(start + entries[name]["data_offsets"][0])
                out.write(np.ascontiguousarray(values).tobytes())
        out.truncate(start + position)
    assert start + entries["model.layers.1.past_2gib.weight"]["data_offsets"][0] > 1 << 31
    assert start + entries["model.layers.1.past_4gib.weight"]["data_offsets"][0] > 1 << 32
    return path
