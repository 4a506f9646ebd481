"""Make a test checkpoint for a model shape, and check any checkpoint: the two things the CLI offers."""

from __future__ import annotations

import shutil
from pathlib import Path

from mali_hil.harness.checkpoints.faults import CheckpointWriteError, ModelError
from mali_hil.harness.checkpoints.fill import FILL_DTYPES, make_fill
from mali_hil.harness.checkpoints.index import Checkpoint, validate_checkpoint
from mali_hil.harness.checkpoints.models import ModelConfig, get_model
from mali_hil.harness.checkpoints.write import write_safetensors, write_sharded

SINGLE_FILE_NAME = "model.safetensors"


def make_checkpoint(
    model: str | ModelConfig,
    out: str | Path,
    *,
    scale: float = 1.0,
    seed: int = 0,
    shards: int = 1,
    dtype: str = "BF16",
    fill: str = "normal",
    layers: int | None = None,
    aligned: bool | None = None,
) -> Checkpoint:
    """Write a checkpoint with ``model``'s tensors (scaled) and seeded values; return it, validated. ``aligned``:
    each file's data section at a multiple of 16 bytes (True), 8 bytes past one (False), or as the header falls.

    With ``shards == 1``, ``out`` is the ``.safetensors`` file (or an existing folder to put
    ``model.safetensors`` in); with more, ``out`` is a folder that gets the shards and the index.
    """
    config = get_model(model).scaled(scale, layers=layers)
    if dtype not in FILL_DTYPES:
        raise ModelError(f"cannot make a {dtype} checkpoint; choose one of: {', '.join(FILL_DTYPES)}")
    if type(shards) is not int or shards < 1:
        raise ModelError(f"shards must be a positive integer, not {shards!r}")
    out = Path(out)
    _check_disk_space(out, config.nbytes(dtype) + _HEADER_ALLOWANCE * config.tensor_count)  # before listing them
    values = make_fill(fill, seed=seed)
    specs = config.specs(dtype)
    metadata = {
        "format": "pt",  # what Hugging Face loaders expect to find
        "mali_hil.model": config.name,
        "mali_hil.fill": fill,
        "mali_hil.seed": str(seed),
    }
    if shards == 1:
        target = out / SINGLE_FILE_NAME if out.is_dir() else out
        if target.suffix != ".safetensors":
            raise CheckpointWriteError(target, "a single-file checkpoint needs a path ending in .safetensors")
        target.parent.mkdir(parents=True, exist_ok=True)
        write_safetensors(target, specs, values, metadata, aligned)
        return validate_checkpoint(target)
    if out.exists() and not out.is_dir():
        raise CheckpointWriteError(out, f"a {shards}-shard checkpoint is written into a folder, and this is a file")
    return validate_checkpoint(write_sharded(out, specs, values, shards, metadata, aligned))


_HEADER_ALLOWANCE = 256  # bytes of JSON header per tensor, more than any model's names and shapes take


def _check_disk_space(out: Path, needed: int) -> None:
    """Refuse before writing a byte: a checkpoint that cannot fit would fill the disk and be left half written."""
    existing = next(p for p in (out, *out.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise CheckpointWriteError(
            out,
            f"the checkpoint needs {needed / 2**30:.2f} GiB but {existing} has {free / 2**30:.2f} GiB free; "
            "pass a smaller --scale (e.g. 0.1) or --layers, or write elsewhere",
        )


def check_checkpoint(path: str | Path) -> Checkpoint:
    """Validate a ``.safetensors`` file, a shard index, or a folder holding one; raise the error it breaks."""
    return validate_checkpoint(path)
