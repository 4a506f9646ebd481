"""A checkpoint as a whole: one ``.safetensors`` file, or shards listed by a Hugging Face index.

The index (``model.safetensors.index.json``) is ``{"metadata": {"total_size": N}, "weight_map": {tensor
name: shard file name}}`` with shard names relative to the index's folder. A sharded checkpoint is valid
when every shard is a valid safetensors file and the weight_map and the shards agree exactly: each
tensor is stored once, in the shard the index names. ``total_size`` is informational (Hugging Face
writers do not always agree on it) and is not checked.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from mali_hil.harness.checkpoints.faults import (
    CheckpointError,
    CheckpointNotFoundError,
    IndexFormatError,
    IndexTensorMissingError,
    ShardMissingError,
    ShardOutsideError,
    UnindexedTensorError,
)
from mali_hil.harness.checkpoints.format import TensorInfo, unique_keys
from mali_hil.harness.checkpoints.validate import MAX_HEADER_SIZE, CheckpointInfo, open_regular, validate

INDEX_SUFFIX = ".safetensors.index.json"
DEFAULT_INDEX_NAME = "model" + INDEX_SUFFIX


@dataclass(frozen=True)
class Checkpoint:
    """A validated checkpoint: its files, where each tensor lives, and its size.

    ``total_bytes`` counts tensor data only (the Hugging Face ``total_size``), not headers.
    ``metadata`` is the ``__metadata__`` of the single file, or of the first shard.
    """

    files: tuple[Path, ...]
    tensors: Mapping[str, tuple[Path, TensorInfo]]
    total_bytes: int
    metadata: Mapping[str, str]
    index: Path | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.tensors)

    @property
    def file_bytes(self) -> int:
        """Bytes on disk, headers included."""
        return sum(path.stat().st_size for path in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": [str(path) for path in self.files],
            "index": None if self.index is None else str(self.index),
            "tensors": len(self.tensors),
            "total_bytes": self.total_bytes,
            "metadata": dict(self.metadata),
        }


def validate_checkpoint(path: str | Path, max_header: int = MAX_HEADER_SIZE) -> Checkpoint:
    """Validate a ``.safetensors`` file, a ``*.safetensors.index.json`` with its shards, or a folder
    holding exactly one of either. Raises the ``CheckpointError`` the checkpoint breaks. ``max_header`` bounds
    every header (and the index file) before it is read."""
    path = _resolve(Path(path))
    if path.name.endswith(".index.json"):
        return _validate_sharded(path, max_header)
    info = validate(path, max_header)
    return Checkpoint(
        files=(path,),
        tensors={t.name: (path, t) for t in info.tensors},
        total_bytes=info.tensor_bytes,
        metadata=dict(info.metadata or {}),
    )


def read_index(path: str | Path, max_size: int = MAX_HEADER_SIZE) -> dict[str, str]:
    """The weight_map of an index file (tensor name -> shard file name), checked for shape only."""
    path = Path(path)
    with os.fdopen(open_regular(path, "shard index"), "rb") as handle:
        raw = handle.read(max_size + 1)
    if len(raw) > max_size:
        raise IndexFormatError(path, f"the index is larger than {max_size:,} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IndexFormatError(path, f"index byte {exc.start} is not valid UTF-8") from None
    doc = _load_unique(text, path)
    if not isinstance(doc, dict) or not isinstance(doc.get("weight_map"), dict):
        raise IndexFormatError(path, 'index has no "weight_map" object')
    if not isinstance(doc.get("metadata", {}), dict):
        raise IndexFormatError(path, 'index "metadata" is not an object')
    weight_map: dict[str, str] = doc["weight_map"]
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not _is_plain_relative(shard):
            raise IndexFormatError(
                path, f"weight_map maps {name!r} to {shard!r}, not a file name inside the index's folder", tensor=name
            )
    return weight_map


def checkpoint_files(path: Path) -> list[Path]:
    """The files a checkpoint is made of, to send it elsewhere: itself, and for an index the shards it names that
    exist beside it. Nothing is refused here: a bad index or a missing shard is the validator's to refuse, on the
    side that loads it."""
    if not path.is_file():
        return []
    names: list[str] = []
    if path.name.endswith(".json"):
        with contextlib.suppress(CheckpointError, OSError):
            names = sorted(set(read_index(path).values()))
    return [path, *(path.parent / name for name in names if (path.parent / name).is_file())]


def index_document(weight_map: Mapping[str, str], total_size: int) -> bytes:
    """Bytes of a Hugging Face style index file."""
    doc = {"metadata": {"total_size": total_size}, "weight_map": dict(weight_map)}
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _validate_sharded(index: Path, max_header: int) -> Checkpoint:
    weight_map = read_index(index, max_header)
    shard_names = list(dict.fromkeys(weight_map.values()))
    for shard in shard_names:
        if not (index.parent / shard).is_file():
            raise ShardMissingError(index, f"shard {shard!r} named in the weight_map does not exist")
        _confine(index, shard)
    infos = [validate(index.parent / shard, max_header) for shard in shard_names]
    tensors: dict[str, tuple[Path, TensorInfo]] = {}
    for shard, info in zip(shard_names, infos, strict=True):
        _check_shard_against_index(index, shard, info, weight_map)
        tensors.update((t.name, (info.path, t)) for t in info.tensors)
    for name, shard in weight_map.items():
        if name not in tensors:
            raise IndexTensorMissingError(
                index, f"weight_map puts tensor {name!r} in {shard!r}, which does not contain it", tensor=name
            )
    return Checkpoint(
        files=tuple(info.path for info in infos),
        tensors=tensors,
        total_bytes=sum(info.tensor_bytes for info in infos),
        metadata=dict((infos[0].metadata or {}) if infos else {}),
        index=index,
    )


def _check_shard_against_index(index: Path, shard: str, info: CheckpointInfo, weight_map: Mapping[str, str]) -> None:
    for tensor in info.tensors:
        listed = weight_map.get(tensor.name)
        if listed != shard:
            where = "does not list it" if listed is None else f"puts it in {listed!r}"
            raise UnindexedTensorError(
                index, f"shard {shard!r} holds tensor {tensor.name!r} but the weight_map {where}", tensor=tensor.name
            )


def _confine(index: Path, shard: str) -> None:
    """A shard must really live beside its index: a symlink may point within the index's folder, or within the
    folder the index itself resolves to (a Hugging Face cache snapshot links every file into ``../../blobs``),
    never elsewhere (a shard linked to ``/etc/shadow`` would be read, and its bytes described in errors)."""
    target = (index.parent / shard).resolve()
    homes = {index.parent.resolve(), index.resolve().parent}
    if not any(target.is_relative_to(home) for home in homes):
        raise ShardOutsideError(index, f"shard {shard!r} is a link that leads outside the index's folder", tensor=None)


def _resolve(path: Path) -> Path:
    """A folder stands for the one index, or else the one .safetensors file, inside it."""
    try:
        exists = path.exists()
    except OSError as exc:  # a name too long, a loop of symlinks
        raise CheckpointNotFoundError(exc.errno, f"cannot use {path} as a checkpoint ({exc.strerror})") from None
    if not exists:
        raise CheckpointNotFoundError(2, f"no checkpoint at {path}")
    if not path.is_dir():
        return path
    candidates = sorted(path.glob("*" + INDEX_SUFFIX)) or sorted(path.glob("*.safetensors"))
    if len(candidates) != 1:
        found = ", ".join(c.name for c in candidates) or "none"
        raise CheckpointNotFoundError(
            2, f"{path} is a folder; it must hold exactly one *{INDEX_SUFFIX} or one *.safetensors (found: {found})"
        )
    return candidates[0]


def _load_unique(text: str, path: Path) -> Any:
    def duplicate(key: str) -> Exception:
        return IndexFormatError(path, f"key {key!r} appears twice in one JSON object", tensor=key)

    try:
        return json.loads(text, object_pairs_hook=unique_keys(duplicate))
    except IndexFormatError:
        raise
    except (ValueError, RecursionError) as exc:
        raise IndexFormatError(path, f"index is not valid JSON ({exc})") from None


def _is_plain_relative(name: str) -> bool:
    # Shards live next to the index; anything that climbs out or is absolute is refused.
    pure = PurePosixPath(name)
    return bool(name) and "\\" not in name and not pure.is_absolute() and ".." not in pure.parts
