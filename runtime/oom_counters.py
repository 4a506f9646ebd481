"""The OOM killer's own counters, read from outside any job: the kernel's (the whole machine) and the memory
cgroup's of the container we run in. A SIGKILL counts as an OOM kill only on evidence the job cannot make (README,
"Threat model"), and one of these counters rising while the job ran is such evidence. One reading and one rule for
the rise, for the supervisor (a process it started) and the worker (a job's child) alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_VMSTAT = Path("/proc/vmstat")


def kernel_oom_kills() -> int | None:
    """The kernel's count of OOM kills since boot (``oom_kill`` in /proc/vmstat, Linux >= 4.13), or None."""
    try:
        for line in _VMSTAT.read_text(encoding="ascii").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        return None
    return None


def rise(before: int | None, after: int | None) -> int:
    """How much a counter went up between two readings; 0 when either is missing (no evidence either way)."""
    return max(0, after - before) if before is not None and after is not None else 0


@dataclass(frozen=True)
class OomKillCounts:
    kernel: int | None = None
    container: int | None = None  # None outside a container with a memory limit

    @classmethod
    def read(cls) -> OomKillCounts:
        from mali_hil.runtime.ram import container_oom_kills

        return cls(kernel_oom_kills(), container_oom_kills())

    def since(self, before: OomKillCounts) -> OomKillCounts:
        """How much each counter went up from ``before`` to this reading (see ``rise``)."""
        return OomKillCounts(rise(before.kernel, self.kernel), rise(before.container, self.container))
