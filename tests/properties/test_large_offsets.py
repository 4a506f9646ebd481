"""Property, large offsets: tensors past 2^31 and 2^32 bytes of their file load as stored (see past_4gib: a sparse
file of 4.3 GB that takes a few KiB of disk, whose holes are layer 0's and never read).

Catches a file offset held in 32 bits (signed: negative past 2 GiB; unsigned: wrapped past 4 GiB, reading a hole's
zeros), which every checkpoint the other properties make (a few MB) passes. Judged against the reference reader's
digests of the tensors the node loads, read directly (conftest's cache would hash the whole 4.3 GB file).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mali_hil.harness.loaders import LoadOptions, get_loader
from mali_hil.harness.records.results import LoadResult
from mali_hil.harness.values.oracles import expected_digests

from . import past_4gib
from .conftest import failed, oracle_target

pytestmark = pytest.mark.mali_hil_property("large-offsets")

SHARD = (1, 1)
IN_PLACE_KINDS = ("emulated-mali", "local")  # devices that read the checkpoint where it is (no copy to a board)


def test_tensors_past_4gib_load_as_stored(load, loader_name: str, mali_device, past_4gib_checkpoint: Path) -> None:
    """The node of layer 1 loads the tensors after each hole, by name, dtype, shape and bytes."""
    if mali_device.facts.kind not in IN_PLACE_KINDS:
        pytest.skip(f"{mali_device.spec} would copy the 4.3 GB file to the board (holes and all)")
    bounds = get_loader(loader_name).bounds_or_default(past_4gib_checkpoint, LoadOptions(shard=SHARD))
    budget = mali_device.facts.ram_budget_bytes
    if budget is not None and bounds.ram > budget:
        pytest.skip(f"{loader_name}: {bounds.source('RAM')} is {bounds.ram} bytes here (it reads whole"
                    f" files), more than the board's {budget}; memory-bound and oom judge that")  # fmt: skip
    check_past_4gib(load(past_4gib_checkpoint, shard=SHARD), past_4gib_checkpoint)


def check_past_4gib(result: LoadResult, checkpoint: Path) -> None:
    """The node's job loaded exactly the tensors after the holes, with the reference reader's digests."""
    assert result.ok, failed(result)
    # file pages the worker had mapped at the job's peak (its libraries: ~80-100 MiB): a hole read or prefaulted
    # (a whole-file read, MAP_POPULATE) would add 2 GiB of them, slowly, and on a board evict what it needs
    assert result.peak_file_bytes is None or result.peak_file_bytes < past_4gib.HOLE_BYTES // 2, (
        f"{result.loader}: {result.peak_file_bytes} bytes of file pages resident: it read layer 0's holes"
    )
    want = expected_digests(checkpoint, past_4gib.loaded_keys(), oracle_target(result))
    wrong = sorted(name for name in set(want) | set(result.digests) if result.digests.get(name) != want.get(name))
    assert not wrong, (
        f"{result.loader}: {len(wrong)} tensors past 2^31/2^32 bytes differ from the reference reader's"
        f" ({', '.join(wrong[:4])}); e.g. {wrong[0]}: got {result.digests.get(wrong[0])}, want {want.get(wrong[0])}"
    )
