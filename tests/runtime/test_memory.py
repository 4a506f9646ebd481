"""mali_hil.runtime.memory on real processes: anon, file-backed and shared pages land in the right bucket."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mali_hil.runtime.memory import (
    MemoryPeaks,
    ProcessMemory,
    peak_rss,
    read_process_memory,
    read_tree_memory,
    reset_peak_rss,
    tree_pids,
)

MiB = 1 << 20
SIZE = 64 * MiB

# Child programs print "ready" once their memory is in place, then wait for stdin to close.
TOUCH_ANON = f"data = b'\\x01' * {SIZE}"
TOUCH_SHMEM = f"import mmap; m = mmap.mmap(-1, {SIZE}); m.write(b'\\x01' * {SIZE})"


@contextmanager
def child(code: str, *args: str) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """A Python child that runs ``code``, prints ``ready ...`` and then waits until we close its stdin."""
    program = code + "\nimport sys\nprint('ready', flush=True)\nsys.stdin.read()\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", program, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        lines = []
        while not (line := proc.stdout.readline()).startswith("ready"):  # type: ignore[union-attr]
            assert line, f"child died before it was ready (exit {proc.wait()})"
            lines.append(line.strip())
        yield proc, lines
    finally:
        proc.kill()
        proc.wait()


def test_anonymous_memory_counts_as_anon_and_unified() -> None:
    with child("pass") as (idle, _):
        baseline = read_process_memory(idle.pid)
    with child(TOUCH_ANON) as (proc, _):
        mem = read_process_memory(proc.pid)
    assert mem.anon_bytes - baseline.anon_bytes >= SIZE * 0.95
    assert mem.file_bytes < baseline.file_bytes + 8 * MiB  # the bytes object is not a file
    assert mem.unified == mem.anon_bytes + mem.shmem_bytes
    assert mem.rss == mem.anon_bytes + mem.file_bytes + mem.shmem_bytes


def test_mmapped_file_pages_are_file_backed_not_anon(tmp_path: Path) -> None:
    data = tmp_path / "weights.bin"
    data.write_bytes(os.urandom(SIZE))
    read_all = textwrap.dedent(f"""
        import mmap, sys
        f = open(sys.argv[1], 'rb')
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        total = sum(m[i] for i in range(0, {SIZE}, 4096))  # one byte per page faults every page in
    """)
    with child("pass") as (idle, _):
        baseline = read_process_memory(idle.pid)
    with child(read_all, str(data)) as (proc, _):
        mem = read_process_memory(proc.pid)
    assert mem.file_bytes - baseline.file_bytes >= SIZE * 0.95
    assert mem.anon_bytes < baseline.anon_bytes + 16 * MiB  # reading through the mapping copies nothing
    assert mem.unified < baseline.unified + 16 * MiB


def test_shared_anonymous_memory_is_shmem_and_counts_as_unified() -> None:
    with child(TOUCH_SHMEM) as (proc, _):
        mem = read_process_memory(proc.pid)
    assert mem.shmem_bytes >= SIZE * 0.95
    assert mem.unified >= mem.anon_bytes + SIZE * 0.95


def test_tree_sum_includes_grandchildren() -> None:
    grandchild = f"{TOUCH_ANON}\nimport os\nprint('ready', os.getpid(), flush=True)\nimport time\ntime.sleep(60)"
    middle = textwrap.dedent(f"""
        import subprocess, sys
        gc = subprocess.Popen([sys.executable, '-c', {grandchild!r}], stdout=subprocess.PIPE, text=True)
        line = gc.stdout.readline()
        print('grandchild', line.split()[1], flush=True)
    """)
    with child(middle) as (proc, lines):
        grandchild_pid = int(lines[0].split()[1])
        pids = tree_pids(proc.pid)
        own = read_process_memory(proc.pid)
        tree = read_tree_memory(proc.pid)
        os.kill(grandchild_pid, 9)
    assert pids[0] == proc.pid
    assert grandchild_pid in pids
    assert tree.anon_bytes - own.anon_bytes >= SIZE * 0.95


def test_read_tree_memory_over_given_pids_skips_vanished_ones() -> None:
    with child("pass") as (a, _), child(TOUCH_ANON) as (b, _):
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        total = read_tree_memory(a.pid, [a.pid, b.pid, gone.pid])
        assert total.anon_bytes >= read_process_memory(b.pid).anon_bytes


def test_a_missing_process_is_process_lookup_error() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    with pytest.raises(ProcessLookupError):
        read_process_memory(proc.pid)
    with pytest.raises(ProcessLookupError):
        read_tree_memory(proc.pid)


def test_peak_rss_remembers_freed_memory_until_reset() -> None:
    code = f"{TOUCH_ANON}\ndel data"  # a big bytes object is its own mapping: del gives it back to the kernel
    with child(code) as (proc, _):
        current = read_process_memory(proc.pid).rss
        peak = peak_rss(proc.pid)
        assert peak - current >= SIZE * 0.9
        reset_peak_rss(proc.pid)
        assert peak_rss(proc.pid) < current + 4 * MiB


def test_peaks_keep_each_maximum_and_unified_from_one_sample() -> None:
    peaks = MemoryPeaks().update(ProcessMemory(100, 5, 0)).update(ProcessMemory(10, 50, 60))
    assert (peaks.anon_bytes, peaks.file_bytes, peaks.shmem_bytes) == (100, 50, 60)
    assert peaks.unified_bytes == 100  # max(100 + 0, 10 + 60), never 100 + 60


FORK_AFTER_TOUCH = f"""
import os, time
data = bytearray(b'\\x01' * {SIZE})
pid = os.fork()
if pid == 0:
    import sys
    if sys.argv[1] == "write":
        mine = bytearray(b'\\x02' * {SIZE})  # pages of its own
    time.sleep(60)
    os._exit(0)
print("forked", pid, flush=True)
"""


@pytest.mark.parametrize("child_writes", [False, True])
def test_a_forked_child_counts_only_its_own_pages(child_writes: bool) -> None:
    """PoCL forks to link kernels: the child's copy-on-write view of the parent's heap must not count twice
    (a budget would kill for memory that exists once), but memory the child writes is real and counts."""
    with child(FORK_AFTER_TOUCH, "write" if child_writes else "idle") as (proc, lines):
        kid = int(lines[-1].split()[1])
        import time

        time.sleep(0.5 if child_writes else 0.1)  # let the child write its own pages
        tree = read_tree_memory(proc.pid)
        parent = read_process_memory(proc.pid)
        assert kid in tree_pids(proc.pid)
        extra = tree.anon_bytes - parent.anon_bytes
        if child_writes:
            assert SIZE * 0.95 <= extra <= SIZE * 1.2
        else:
            assert extra < 8 * MiB  # the shared heap counted once
        os.kill(kid, 9)
