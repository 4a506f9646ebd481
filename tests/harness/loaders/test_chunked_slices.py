"""chunked's copy machinery on its own: the slicing that shares a chunk between threads, the work the loading thread
does beside it, and the read that converts in place. The loads themselves are judged in test_loaders.py."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from mali_hil.harness.loaders.chunked import SLICE_BYTES, Slicer, _read_slice, _Source

SLICES = 24
COUNT = SLICES * SLICE_BYTES  # one byte per element: SLICES slices


class Recorder:
    """A chunk's work that notes which spans ran and how many are running at once."""

    def __init__(self, fail_at: int | None = None, wait_for: threading.Event | None = None) -> None:
        self.spans: list[tuple[int, int]] = []
        self.running = 0
        self.started_while_meanwhile = 0
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._fail_at, self._wait_for = fail_at, wait_for

    def __call__(self, a: int, b: int) -> None:
        with self._lock:
            self.running += 1
            taken = len(self.spans)
            self.spans.append((a, b))
        try:
            if self._wait_for is not None and self._wait_for.wait(0):
                with self._lock:
                    self.started_while_meanwhile += 1
            if taken == self._fail_at:
                raise ValueError(f"slice {a}:{b} failed")
            threading.Event().wait(0.002)  # long enough for the other thread to take slices too
        finally:
            with self._lock:
                self.running -= 1
            self.done.set()


def test_every_element_is_worked_once_and_the_helper_works_while_meanwhile_runs() -> None:
    """Catches: slices lost or done twice when threads take them in turn, and ``meanwhile`` run before or after
    the slices instead of beside them (the overlap is the point: the next buffer's commit beside this copy)."""
    slicer = Slicer(2)
    inside = threading.Event()
    work = Recorder(wait_for=inside)
    helper_worked_meanwhile: list[bool] = []

    def meanwhile() -> None:
        inside.set()
        helper_worked_meanwhile.append(work.done.wait(5))

    try:
        slicer.run(COUNT, COUNT, work, meanwhile)
    finally:
        slicer.close()
    assert helper_worked_meanwhile == [True]
    assert work.started_while_meanwhile >= 1
    edges = sorted(work.spans)
    assert edges[0][0] == 0 and edges[-1][1] == COUNT and len(edges) == SLICES
    assert all(a[1] == b[0] for a, b in itertools.pairwise(edges))


@pytest.mark.parametrize("threads", [1, 2])
def test_small_work_and_meanwhile_both_run_on_any_thread_count(threads: int) -> None:
    """Catches: ``meanwhile`` dropped when the chunk is too small to slice or there are no helper threads."""
    slicer = Slicer(threads)
    work, ran = Recorder(), []
    try:
        slicer.run(100, 100, work, lambda: ran.append(True))
    finally:
        slicer.close()
    assert work.spans == [(0, 100)] and ran == [True]


def test_a_failing_slice_is_raised_once_every_slice_has_ended_and_the_rest_are_left() -> None:
    """Catches: run returning (and the caller unmapping the chunk) while a slice still writes into it, and the
    remaining slices worked after one already failed."""
    slicer = Slicer(2)
    work = Recorder(fail_at=1)
    try:
        with pytest.raises(ValueError, match="failed"):
            slicer.run(COUNT, COUNT, work)
        assert work.running == 0
        assert len(work.spans) < SLICES
    finally:
        slicer.close()


def test_a_failing_meanwhile_is_raised_once_every_slice_has_ended() -> None:
    """Catches: the next buffer's failed allocation (say, the board out of memory) returning while the helper
    still writes into this chunk's mapped range."""
    slicer = Slicer(2)
    work = Recorder()

    def meanwhile() -> None:
        work.done.wait(5)
        raise MemoryError("the next buffer does not fit")

    try:
        with pytest.raises(MemoryError, match="does not fit"):
            slicer.run(COUNT, COUNT, work, meanwhile)
        assert work.running == 0 and work.spans
    finally:
        slicer.close()


@pytest.mark.parametrize("source, final", [(ml_dtypes.bfloat16, np.float16), (np.float16, ml_dtypes.bfloat16)])
def test_a_slice_read_into_the_device_range_is_converted_in_place_exactly(tmp_path: Path, source: type,
                                                                          final: type) -> None:  # fmt: skip
    """Catches: an in-place conversion that reads elements it already overwrote (or a slice offset wrong by the
    item size), checked against ml_dtypes' own out-of-place cast, specials and subnormals included."""
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 1 << 16, size=40_000, dtype=np.uint16)
    stored = bits.view(source)
    path = tmp_path / "tensor.bin"
    header = b"h" * 24  # the tensor starts after a header, as in a safetensors file
    path.write_bytes(header + stored.tobytes())
    with np.errstate(over="ignore", invalid="ignore"):
        expected = stored.astype(final)
    dst = np.zeros(stored.nbytes, dtype=np.uint8)
    src = _Source.open(path)
    try:
        for a, b in [(0, 13_001), (13_001, 27_777), (27_777, stored.size)]:
            _read_slice(src, dst, len(header), 2, (source, final), a, b)
    finally:
        src.close()
    got = dst.view(final)
    same = got.view(np.uint16) == expected.view(np.uint16)
    both_nan = np.isnan(got.astype(np.float32)) & np.isnan(expected.astype(np.float32))
    assert np.all(same | both_nan)
