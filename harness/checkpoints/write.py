"""Streaming safetensors writers: one file, or Hugging Face style shards plus an index.

Tensor data comes from a *fill*: a callable that, given a ``TensorSpec``, yields the tensor's bytes in
chunks (``bytes``-like objects or numpy arrays). Only one chunk is alive at a time, so writing a 16 GB
checkpoint needs memory for one chunk, never for a whole tensor. Files are written under a temporary
name and renamed at the end, so a crash never leaves a half-written file that looks like a checkpoint.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mali_hil.harness.checkpoints.faults import CheckpointWriteError
from mali_hil.harness.checkpoints.format import (
    DTYPE_BITS,
    METADATA_KEY,
    TensorInfo,
    TensorSpec,
    encode_header,
    numpy_dtype,
)
from mali_hil.harness.checkpoints.index import DEFAULT_INDEX_NAME, index_document
from mali_hil.harness.checkpoints.validate import PREFIX_SIZE, CheckpointInfo

Chunk = bytes | bytearray | memoryview | np.ndarray
Fill = Callable[[TensorSpec], Iterable[Chunk]]


def layout(specs: Sequence[TensorSpec], path: str | Path = "<new checkpoint>") -> tuple[TensorInfo, ...]:
    """Place tensors in a buffer: wider dtypes first (so every tensor stays aligned to its element size, as
    reference writers do), otherwise in the given order; each starts where the previous one ends."""
    _check_specs(specs, path)
    ordered = sorted(specs, key=lambda s: -DTYPE_BITS[s.dtype])  # stable: keeps model order within a dtype
    infos = []
    position = 0
    for spec in ordered:
        infos.append(TensorInfo(spec.name, spec.dtype, spec.shape, position, position + spec.nbytes))
        position += spec.nbytes
    return tuple(infos)


def write_safetensors(
    path: str | Path,
    specs: Sequence[TensorSpec],
    fill: Fill,
    metadata: Mapping[str, str] | None = None,
    aligned: bool | None = None,
) -> CheckpointInfo:
    """Write one ``.safetensors`` file, streaming each tensor's chunks from ``fill(spec)``; ``aligned``: see
    :func:`~mali_hil.harness.checkpoints.format.encode_header`."""
    path = Path(path)
    _check_metadata(metadata, path)
    tensors = layout(specs, path)
    header = encode_header(tensors, metadata, aligned)
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("wb") as handle:
            handle.write(len(header).to_bytes(PREFIX_SIZE, "little"))
            handle.write(header)
            for info in tensors:
                _write_tensor(handle, info, fill, path)
        os.replace(partial, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    file_size = PREFIX_SIZE + len(header) + (tensors[-1].end if tensors else 0)
    return CheckpointInfo(path, len(header), file_size, tensors, None if metadata is None else dict(metadata))


def plan_shards(specs: Sequence[TensorSpec], shards: int) -> tuple[tuple[TensorSpec, ...], ...]:
    """Cut ``specs`` (kept in order, never splitting a tensor) into ``shards`` non-empty runs of about equal
    bytes: each cut is placed at the tensor boundary nearest to an equal share, so a shard differs from
    ``total / shards`` by at most the largest tensor."""
    if shards < 1 or shards > max(len(specs), 1):
        raise CheckpointWriteError(
            "<sharded checkpoint>", f"cannot cut {len(specs)} tensors into {shards} shards", actual=shards
        )
    ends = [0]
    for spec in specs:
        ends.append(ends[-1] + spec.nbytes)
    total = ends[-1]
    cuts = [0]
    for i in range(1, shards):
        share = total * i / shards
        j = bisect.bisect_left(ends, share)
        if j > 0 and (j == len(ends) or share - ends[j - 1] <= ends[j] - share):
            j -= 1
        # Leave at least one tensor for this shard and for every shard after it.
        j = min(max(j, cuts[-1] + 1), len(specs) - (shards - i))
        cuts.append(j)
    cuts.append(len(specs))
    return tuple(tuple(specs[a:b]) for a, b in itertools.pairwise(cuts))


def shard_name(i: int, shards: int, prefix: str = "model") -> str:
    """Hugging Face shard file name, 1-based: ``model-00001-of-00003.safetensors``."""
    return f"{prefix}-{i:05d}-of-{shards:05d}.safetensors"


def write_sharded(
    out_dir: str | Path,
    specs: Sequence[TensorSpec],
    fill: Fill,
    shards: int,
    metadata: Mapping[str, str] | None = None,
    aligned: bool | None = None,
) -> Path:
    """Write ``shards`` files plus ``model.safetensors.index.json`` into ``out_dir``; return the index path."""
    out_dir = Path(out_dir)
    _check_specs(specs, out_dir)
    plan = plan_shards(specs, shards)
    out_dir.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    for i, part in enumerate(plan, start=1):
        name = shard_name(i, shards)
        write_safetensors(out_dir / name, part, fill, metadata, aligned)
        weight_map.update((spec.name, name) for spec in part)
    index = out_dir / DEFAULT_INDEX_NAME
    partial = index.with_name(index.name + ".partial")
    partial.write_bytes(index_document(weight_map, sum(spec.nbytes for spec in specs)))
    os.replace(partial, index)
    return index


def _write_tensor(handle: BinaryIO, info: TensorInfo, fill: Fill, path: Path) -> None:
    expected_dtype = numpy_dtype(info.dtype)
    written = 0
    for chunk in fill(info.spec):
        data = _chunk_bytes(chunk, expected_dtype, info, path)
        written += data.nbytes
        if written > info.nbytes:
            break
        handle.write(data)
    if written != info.nbytes:
        raise CheckpointWriteError(
            path,
            f"fill gave {'more than ' if written > info.nbytes else ''}{written} bytes for tensor {info.name!r}"
            f" ({info.dtype}, shape {list(info.shape)}), which needs {info.nbytes}",
            tensor=info.name,
            expected=info.nbytes,
            actual=written,
        )


def _chunk_bytes(chunk: Chunk, expected: np.dtype | None, info: TensorInfo, path: Path) -> memoryview:
    if not isinstance(chunk, np.ndarray):
        return memoryview(chunk).cast("B")
    if expected is not None and chunk.dtype.newbyteorder("=") != expected.newbyteorder("="):
        raise CheckpointWriteError(
            path, f"fill gave {chunk.dtype} values for tensor {info.name!r} of dtype {info.dtype}", tensor=info.name
        )
    # safetensors is little-endian; views (no copies) unless the array is big-endian or strided.
    little = chunk.astype(chunk.dtype.newbyteorder("<"), copy=False)
    return memoryview(np.ascontiguousarray(little).reshape(-1).view(np.uint8))


def _check_specs(specs: Sequence[TensorSpec], path: str | Path) -> None:
    seen: set[str] = set()
    for spec in specs:
        problem = _spec_problem(spec, seen)
        if problem:
            raise CheckpointWriteError(path, problem, tensor=spec.name if isinstance(spec.name, str) else None)
        seen.add(spec.name)


def _spec_problem(spec: TensorSpec, seen: set[str]) -> str | None:
    if not isinstance(spec.name, str) or spec.name == METADATA_KEY or spec.name in seen:
        return f"tensor name {spec.name!r} is reserved, repeated or not a string"
    if not spec.name.isascii():
        try:
            spec.name.encode("utf-8")
        except UnicodeEncodeError:
            return f"tensor name {spec.name!r} cannot be encoded as UTF-8"
    if spec.dtype not in DTYPE_BITS:
        return f"tensor {spec.name!r} has unknown dtype {spec.dtype!r}"
    if any(type(dim) is not int or dim < 0 for dim in spec.shape):
        return f"tensor {spec.name!r} has shape {spec.shape!r}; dims must be non-negative integers"
    if spec.numel * DTYPE_BITS[spec.dtype] % 8:
        return f"tensor {spec.name!r} ({spec.dtype}, shape {list(spec.shape)}) is not a whole number of bytes"
    return None


def _check_metadata(metadata: Mapping[str, str] | None, path: Path) -> None:
    if metadata is None:
        return
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise CheckpointWriteError(path, f"__metadata__ entry {key!r}: {value!r} is not string to string")
