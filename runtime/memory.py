"""How much RAM a process (tree) holds, split the way the OOM killer sees it, read from ``/proc``.

``/proc/PID/status`` splits resident memory three ways:

- ``RssAnon``: anonymous pages (malloc, numpy arrays, PoCL's device buffers, which are plain host memory).
  Without swap (a Mali board has none worth the name) the kernel cannot give these back: it must kill.
- ``RssShmem``: shared memory and tmpfs pages. Also unreclaimable without swap, so it counts like anon.
- ``RssFile``: pages of mmap'd files, e.g. a safetensors checkpoint that tinygrad's DISK device maps.
  Clean file pages are page cache: under pressure the kernel drops them (and reads them again later)
  before it OOM-kills anyone. So they do NOT count against a board's budget, but they are reported,
  because they show whether a loader streams from the mapping or copies the checkpoint into anon memory
  (llama.cpp's "mmap halves memory" is exactly this split).

``unified`` = anon + shmem is what the budget is checked against: the memory a Mali board's CPU and GPU
share and the kernel cannot reclaim.

Summing RSS over a process tree would count twice the pages several processes map (a forked child's
copy-on-write view of its parent's heap). So the root counts its RSS (read cheaply from ``status``, every few
milliseconds) and each descendant only the pages it holds privately (``smaps_rollup``, slower, but children
are few and short-lived); see ``read_private_memory``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass

from mali_hil.errors import BackendError

_KIB = 1024


@dataclass(frozen=True)
class ProcessMemory:
    """Resident memory of one process, or the sum over a tree, in bytes."""

    anon_bytes: int = 0
    file_bytes: int = 0
    shmem_bytes: int = 0

    @property
    def unified(self) -> int:
        """What counts against a board's RAM budget: memory the kernel can only free by killing."""
        return self.anon_bytes + self.shmem_bytes

    @property
    def rss(self) -> int:
        return self.anon_bytes + self.file_bytes + self.shmem_bytes

    def __add__(self, other: ProcessMemory) -> ProcessMemory:
        return ProcessMemory(
            self.anon_bytes + other.anon_bytes,
            self.file_bytes + other.file_bytes,
            self.shmem_bytes + other.shmem_bytes,
        )

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "unified_bytes": self.unified}


@dataclass(frozen=True)
class MemoryPeaks:
    """The highest value of each figure over a series of samples.

    Each peak is taken on its own, so ``anon_bytes`` and ``file_bytes`` may come from different moments;
    ``unified_bytes`` is the highest anon + shmem seen in a *single* sample, not the sum of two peaks.
    """

    anon_bytes: int = 0
    file_bytes: int = 0
    shmem_bytes: int = 0
    unified_bytes: int = 0

    def update(self, sample: ProcessMemory) -> MemoryPeaks:
        return MemoryPeaks(
            max(self.anon_bytes, sample.anon_bytes),
            max(self.file_bytes, sample.file_bytes),
            max(self.shmem_bytes, sample.shmem_bytes),
            max(self.unified_bytes, sample.unified),
        )

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


_FIELDS = {b"RssAnon:": "anon_bytes", b"RssFile:": "file_bytes", b"RssShmem:": "shmem_bytes"}


def _read(path: str) -> bytes:
    # os.open/os.read: no buffered-IO object per sample, which matters when a watchdog reads every 2 ms
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 16384)
    finally:
        os.close(fd)


def read_process_memory(pid: int) -> ProcessMemory:
    """One process's resident memory. A zombie or kernel thread has none (all zero).

    Raises ProcessLookupError when the process does not exist (any more).
    """
    try:
        status = _read(f"/proc/{pid}/status")
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessLookupError(f"no process {pid}") from None
    values: dict[str, int] = {}
    for line in status.split(b"\n"):
        for prefix, name in _FIELDS.items():
            if line.startswith(prefix):
                values[name] = int(line.split()[1]) * _KIB  # the kernel always writes "NNN kB"
    return ProcessMemory(**values)


def _scan_proc() -> dict[int, tuple[bytes, int, int]]:
    """pid -> (state, ppid, session id) of every process, in one pass over /proc."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = _read(f"/proc/{name}/stat")
        except OSError:
            continue  # exited since listdir
        # the command name is in parentheses and may itself hold spaces and ')': split after the last one
        fields = stat[stat.rfind(b")") + 2 :].split()
        table[int(name)] = (fields[0], int(fields[1]), int(fields[3]))  # state, ppid, (pgrp,) session
    return table


def tree_pids(root: int, *, living: bool = False) -> list[int]:
    """``root`` (first), its descendants and, when ``root`` leads a session, every other process in that session.

    The session catches what parent links lose: when a middle process exits, its children are reparented to
    init (or a subreaper) and no longer descend from ``root``, yet they are still the job's and still hold its
    memory. ``living`` leaves out zombies (which hold no memory and can no longer be killed).

    One scan of /proc per call, rather than ``/proc/PID/task/TID/children``: those files need
    CONFIG_PROC_CHILDREN (missing on some kernels, CI's among them) and cannot see reparented processes.
    """
    table = _scan_proc()
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, frontier = {root}, [root]
    while frontier:
        for kid in children.get(frontier.pop(), []):
            if kid not in found:
                found.add(kid)
                frontier.append(kid)
    if root in table and table[root][2] == root:  # only a real session leader: never sweep in the caller's session
        found.update(pid for pid, (_, _, sid) in table.items() if sid == root)
    if living:
        found = {pid for pid in found if pid in table and table[pid][0] not in (b"Z", b"X")}
    return sorted(found, key=lambda pid: pid != root)


def read_tree_memory(root: int, pids: list[int] | None = None) -> ProcessMemory:
    """Sum over ``root`` and its descendants (or ``root`` and ``pids``); processes gone meanwhile count as zero.

    Raises ProcessLookupError only when ``root`` itself does not exist.
    """
    total = read_process_memory(root)
    for pid in tree_pids(root) if pids is None else pids:
        if pid != root:
            with contextlib.suppress(ProcessLookupError):
                total = total + read_private_memory(pid)
    return total


_ROLLUP = {b"Anonymous:": "anon", b"Private_Dirty:": "dirty", b"Pss_File:": "file", b"Pss_Shmem:": "shmem"}


def read_private_memory(pid: int) -> ProcessMemory:
    """What a descendant adds to its tree: its *own* pages, not those it shares with its parent.

    A forked child (PoCL forks to link kernels; tinygrad's CPU device runs clang) maps the parent's anonymous
    pages copy-on-write: RssAnon would count them twice, and a budget would kill for memory that exists once.
    So a child counts only anonymous pages it has made private (written to), bounded by Private_Dirty, and its
    proportional share of file and shared-memory pages. smaps_rollup walks page tables, which is fine for the
    short-lived children but too slow for the root, sampled every few milliseconds (RssAnon there).
    """
    try:
        rollup = _read(f"/proc/{pid}/smaps_rollup")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        raise ProcessLookupError(f"no process {pid}") from None
    values = {"anon": 0, "dirty": 0, "file": 0, "shmem": 0}
    for line in rollup.split(b"\n"):
        for prefix, name in _ROLLUP.items():
            if line.startswith(prefix):
                values[name] = int(line.split()[1]) * _KIB
    return ProcessMemory(min(values["anon"], values["dirty"]), values["file"], values["shmem"])


def peak_rss(pid: int) -> int:
    """The kernel's own high-water mark of the process's whole RSS (``VmHWM``: anon + file + shmem), in bytes.

    Unlike sampling, it cannot miss a short spike; but it mixes reclaimable file pages in.
    """
    try:
        status = _read(f"/proc/{pid}/status")
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessLookupError(f"no process {pid}") from None
    for line in status.split(b"\n"):
        if line.startswith(b"VmHWM:"):
            return int(line.split()[1]) * _KIB
    return 0


def reset_peak_rss(pid: int) -> None:
    """Restart the process's ``VmHWM`` from its current RSS (Linux: write 5 to ``/proc/PID/clear_refs``)."""
    try:
        fd = os.open(f"/proc/{pid}/clear_refs", os.O_WRONLY)
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessLookupError(f"no process {pid}") from None
    try:
        os.write(fd, b"5")
    finally:
        os.close(fd)


def mem_available() -> int | None:
    """The kernel's estimate of memory available to new work (MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def host_ram_bytes() -> int:
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise BackendError("cannot read MemTotal from /proc/meminfo")
