"""What a job leaves behind in its warm worker: descriptors and mappings of the checkpoint's files, and threads.

A leak of a descriptor per tensor, a thread or a map of the file passes every value and memory property of the job
that leaked; in a warm worker it is a later job that fails, far from the cause (out of descriptors, out of address
space, a thread still writing). So the worker takes stock before each job (once the checkpoint is validated) and
after it (once its tensors are dropped and tinygrad's caches freed): what the job added is its leak, carried in
its result (``LoadResult.leaked``) and judged by the suite's leaks property, with the loader named.

What is counted, and why only that:
- descriptors open on one of the job's checkpoint files (``/proc/self/fd``): what a loader opens to read; other
  descriptors are the worker's own, opened once (tinygrad's kernel cache database, the compiler), never a job's;
- mappings of those files (``/proc/self/maps``): tinygrad's DISK device and numpy memmaps map them;
- Python threads (``threading.enumerate``): a copy pool never shut down. Native threads are not counted: the
  OpenCL driver starts its own when it first needs them, sometimes after the job that made it need them (a job
  that loaded nothing was seen "leaking" one of PoCL's), so their count says nothing about the loader.
The device (``mali_hil.harness.devices``) retires a worker whose job leaked, so the next job starts in a fresh
one and a leak never spreads to it: the leaked descriptors are not closed here, as the loader may still use them
(a descriptor number closed under it could be reused for another file and read silently).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc/self")


@dataclass(frozen=True)
class Holdings:
    """What the process holds of ``files`` (resolved paths) at one moment."""

    files: frozenset[str]
    descriptors: frozenset[int]
    mappings: int
    threads: frozenset[int]

    @classmethod
    def take(cls, files: Iterable[Path]) -> Holdings | None:
        """Now's holdings; None where ``/proc`` cannot say (not Linux): nothing is judged then."""
        if not (_PROC / "fd").is_dir():
            return None
        names = frozenset(str(Path(path).resolve()) for path in files)
        return cls(names, _descriptors(names), _mappings(names), _threads())

    def leaked(self) -> dict[str, int]:
        """What the process holds now and did not at ``self``: only the kinds with a leak, by count."""
        now = Holdings(self.files, _descriptors(self.files), _mappings(self.files), _threads())
        counts = {
            "descriptors": len(now.descriptors - self.descriptors),
            "mappings": max(0, now.mappings - self.mappings),
            "threads": len(now.threads - self.threads),
        }
        return {kind: count for kind, count in counts.items() if count}


def _descriptors(files: frozenset[str]) -> frozenset[int]:
    held = set()
    for entry in os.scandir(_PROC / "fd"):
        try:
            if os.readlink(entry.path) in files:
                held.add(int(entry.name))
        except OSError:  # closed meanwhile (the scandir's own descriptor among them)
            continue
    return frozenset(held)


def _mappings(files: frozenset[str]) -> int:
    count = 0
    with open(_PROC / "maps", encoding="utf-8", errors="replace") as maps:
        for line in maps:
            fields = line.rstrip("\n").split(maxsplit=5)  # address, perms, offset, dev, inode, path (if any)
            count += len(fields) == 6 and fields[5] in files
    return count


def _threads() -> frozenset[int]:
    return frozenset(thread.ident for thread in threading.enumerate() if thread.ident is not None)
