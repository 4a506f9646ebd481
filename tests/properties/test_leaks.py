"""Property, leaks: a job leaves nothing open in its warm worker: no descriptor or mapping of the checkpoint's
files, no thread. A leak passes every other property of the job that leaked and fails a later one, far from its
cause (out of descriptors, a map per job until the address space runs out); so it is judged on the job itself,
from what the worker counted before and after it (``LoadResult.leaked``, mali_hil.harness.worker.leaks), with
the loader named. The worker that ran a leaking job is retired by the device, so the leak stops there.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mali_hil.harness.records.results import LoadResult

from . import every_kind
from .test_oom import CHUNK_BYTES, EVERY_VARIANT_BOARD, over_cap  # noqa: F401 - over_cap is a fixture

pytestmark = pytest.mark.mali_hil_property("leaks")


def check_no_leak(result: LoadResult) -> None:
    """The job ended (any status: a failed job must not leak either) and left nothing open."""
    assert not result.leaked, (
        f"{result.loader} left open in the worker after its job ({result.status.value}): "
        + ", ".join(f"{count} {kind}" for kind, count in sorted(result.leaked.items()))
        + f" (of {result.checkpoint})"
    )


def test_a_job_leaves_nothing_open(load, loader_name: str, make_checkpoint, every_kind_checkpoint: Path) -> None:
    """Two files of many tensors of every kind (a sharded model, then the every-kind file), each loaded whole:
    catches a descriptor, a map or a copy thread per tensor, per file or per job. Judged whatever the job's status
    (a job that failed must not leak either; why it failed is the other properties' business)."""
    for checkpoint in (make_checkpoint("tiny", shards=2), every_kind_checkpoint):
        check_no_leak(load(checkpoint))


def test_a_refused_job_leaves_nothing_open(load, loader_name: str, tmp_path: Path) -> None:
    """A job the loader refuses part-way (an F64 tensor) after opening its files must close them too."""
    result = load(every_kind.write_refused(tmp_path / "f64.safetensors", "F64"))
    check_no_leak(result)


def test_a_job_that_runs_out_leaves_nothing_open(on_board, loader_name: str, request: pytest.FixtureRequest) -> None:
    """The oom property's over-cap checkpoint on its alloc-error board: a load that fails part-way (device-oom, or
    killed, which ends the worker and anything it held) must not leave the file's map behind. tinygrad's own
    route did (1 descriptor, 1 mapping) until tinygrad-nn synchronized on its failure path too."""
    checkpoint = request.getfixturevalue("over_cap")  # test_oom's fixture, imported above
    result = on_board(EVERY_VARIANT_BOARD, checkpoint, loader_name, chunk_bytes=CHUNK_BYTES, digests=False)
    check_no_leak(result)
    if not result.ok:
        on_board.settle(EVERY_VARIANT_BOARD)
