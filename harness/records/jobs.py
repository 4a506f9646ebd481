"""A load job: what one worker is asked to do. Plain data, so it crosses any process or machine boundary."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mali_hil.errors import JobSpecError

DEFAULT_CHUNK_BYTES = 64 << 20  # the chunk size of the chunked and mmap loaders, unless a job says otherwise


@dataclass(frozen=True)
class LoadJob:
    checkpoint: str  # a .safetensors file or a sharded model.safetensors.index.json, as the worker sees the path
    loader: str = "chunked"  # a built-in name, module:function, or an entry point of group mali_hil.loaders
    shard: tuple[int, int] | None = None  # inclusive layer range this node loads, as exo splits a model
    keep: str = "first-last"  # who loads the non-layer tensors of a shard: see loaders.base.KEEP_RULES
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    target_dtype: str = "float16"
    lru: bool = True  # tinygrad's LRU buffer cache, on by default as users run it
    digests: bool = True  # read the loaded tensors back and digest them (after the memory figures are taken)
    values: bool = False  # also return each tensor's bytes (small tensors only: for tests and diagnostics)
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not (isinstance(self.timeout_s, int | float) and 0 < self.timeout_s < float("inf")):
            raise JobSpecError(f"a job's timeout must be a positive number of seconds, got {self.timeout_s!r}")
        if isinstance(self.chunk_bytes, bool) or not isinstance(self.chunk_bytes, int) or self.chunk_bytes <= 0:
            raise JobSpecError(f"a job's chunk size must be a positive number of bytes, got {self.chunk_bytes!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["shard"] = list(self.shard) if self.shard else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadJob:
        data = dict(data)
        data["shard"] = tuple(data["shard"]) if data.get("shard") else None
        return cls(**data)


def parse_shard(text: str) -> tuple[int, int]:
    """``"4-7"`` -> (4, 7): layers 4 to 7 inclusive, as exo names a node's range."""
    start, sep, end = text.partition("-")
    try:
        first, last = int(start), int(end if sep else start)
    except ValueError:
        first, last = -1, -1
    if first < 0 or last < first:
        raise JobSpecError(f"shard {text!r} is not a layer range: write START-END with 0 <= START <= END, e.g. 0-7")
    return first, last
