"""Model-shaped checkpoints made once and kept on disk, found again by what they contain.

The key is a hash of everything that decides the bytes: the model's shape, the dtype, the fill and its seed, the
shard count and ``FORMAT_VERSION`` (bumped whenever the writer or the fills change what they write). They are kept
in the suite's checkpoint store (:mod:`mali_hil.harness.checkpoints.cache`), in a folder of their own and never
pruned: written in a private folder and renamed into place only when complete, so an interrupted write (Ctrl-C at
8 of 16 GB) is never found as a cached checkpoint, and two commands making the same one do not mix files.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

from mali_hil.harness.checkpoints import Checkpoint, ModelConfig, validate_checkpoint
from mali_hil.harness.checkpoints.cache import cached_checkpoint as stored_checkpoint
from mali_hil.harness.checkpoints.cache import lookup
from mali_hil.harness.checkpoints.fill import make_fill
from mali_hil.harness.checkpoints.format import TensorSpec
from mali_hil.harness.checkpoints.index import DEFAULT_INDEX_NAME
from mali_hil.harness.checkpoints.write import write_sharded

FORMAT_VERSION = 2  # 2: kept in the shared checkpoint store's layout
#: Hugging Face's publishing tools cut shards at 5 GB; Llama-3-8B ships as 4 files.
SHARD_BYTES = 5 * 10**9

Progress = Callable[[int], None]  # called with the bytes just written


def cache_root() -> Path:
    from mali_hil.paths import cache_dir

    return cache_dir() / "cluster-checkpoints"  # apart from the suite's own cache, which prunes its folder


def content_key(config: ModelConfig, dtype: str, fill: str, seed: int, shards: int) -> str:
    doc = {
        "format": FORMAT_VERSION,
        "model": asdict(config),
        "dtype": dtype,
        "fill": fill,
        "seed": seed,
        "shards": shards,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def shard_count(config: ModelConfig, dtype: str) -> int:
    """As published: one file per 5 GB, but at least two, so even a tiny model goes through an index."""
    specs = config.specs(dtype)
    return max(2, min(len(specs), math.ceil(sum(s.nbytes for s in specs) / SHARD_BYTES)))


def cached_checkpoint(
    config: ModelConfig,
    *,
    dtype: str = "BF16",
    fill: str = "normal",
    seed: int = 0,
    root: Path | None = None,
    progress: Progress | None = None,
    on_make: Callable[[int], None] | None = None,
) -> tuple[Checkpoint, bool]:
    """The checkpoint for ``config`` (made now if absent) and whether it was found in the cache.

    ``on_make(total_bytes)`` is called before writing starts; ``progress(n)`` after every chunk written."""
    root = cache_root() if root is None else root
    shards = shard_count(config, dtype)
    name = _safe(config.name)
    key = f"{name}-{dtype.lower()}-{content_key(config, dtype, fill, seed, shards)}"
    found = lookup(key, root) if root.is_dir() else None
    if found is not None:
        return validate_checkpoint(found), True
    specs = config.specs(dtype)
    if on_make is not None:
        on_make(sum(s.nbytes for s in specs))

    def make(folder: Path) -> Path:
        values = make_fill(fill, seed=seed)

        def counted(spec: TensorSpec) -> Iterator[object]:
            for chunk in values(spec):
                yield chunk
                if progress is not None:
                    progress(chunk.nbytes)

        metadata = {"format": "pt", "mali_hil.model": config.name, "mali_hil.fill": fill, "mali_hil.seed": str(seed)}
        write_sharded(folder, specs, counted, shards, metadata)
        return folder / DEFAULT_INDEX_NAME

    # no fallback folder: a store that cannot be written is an error here, not a 16 GB write elsewhere
    return validate_checkpoint(stored_checkpoint(key, name, make, root, root=root, max_age_days=None)), False


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-._@" else "_" for c in name)[:60] or "model"
