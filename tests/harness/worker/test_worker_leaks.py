"""worker.leaks counts what a job leaves open: descriptors and maps of the checkpoint's files, threads; and nothing
of other files, nor what was open before the job or closed within it."""

from __future__ import annotations

import mmap
import os
import threading
from pathlib import Path

from mali_hil.harness.worker.leaks import Holdings


def test_descriptors_maps_and_threads_left_open_are_counted(tmp_path: Path) -> None:
    checkpoint, other = tmp_path / "model.safetensors", tmp_path / "other.bin"
    for path in (checkpoint, other):
        path.write_bytes(b"\0" * mmap.PAGESIZE)
    already = os.open(checkpoint, os.O_RDONLY)  # open before the job: not the job's leak
    holdings = Holdings.take([tmp_path / "." / "model.safetensors"])  # named another way: resolved
    assert holdings is not None
    closed = os.open(checkpoint, os.O_RDONLY)
    os.close(closed)  # opened and closed within the job: no leak
    fds = [os.open(checkpoint, os.O_RDONLY) for _ in range(3)] + [os.open(other, os.O_RDONLY)]
    mapped = mmap.mmap(fds[0], 0, access=mmap.ACCESS_READ)  # a map (and the descriptor mmap keeps)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert holdings.leaked() == {"descriptors": 4, "mappings": 1, "threads": 1}
    finally:
        stop.set()
        thread.join()
        mapped.close()
        for fd in (*fds, already):
            os.close(fd)
    assert holdings.leaked() == {}
