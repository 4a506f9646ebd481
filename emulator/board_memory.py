"""What a board leaves to a job: a profile's ``[memory]`` section, and the one rule that turns it into a budget.

A board never gives a job its nominal RAM: the kernel and firmware reserve part of it (MemTotal is below the
label), the OS and its services use part of the rest, and a job gets about MemAvailable at idle. An emulated
board's RAM budget is that figure, not the nominal size. Resized with ``PROFILE:RAM``, the board keeps the shares
its profile's board showed (MemTotal and MemAvailable as fractions of the nominal RAM): one rule that keeps small
test boards meaningful. It overstates the OS's idle use on a larger board and understates it on a smaller one,
where the real OS would hold about the same bytes; capture the board at its own size for its exact figure.

Swap is not modelled: the budget is a hard limit, where a board that swaps (to zram, as Armbian images do by
default) would slow down and compress before its OOM killer comes. A profile of such a board is refused with the
reason rather than emulated as if it did not swap; so is strict overcommit (``vm.overcommit_memory = 2``), where
allocations fail at the commit limit instead of the OOM killer ending the job.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from mali_hil.errors import ProfileError
from mali_hil.sizes import format_size


@dataclass(frozen=True)
class BoardMemory:
    """The memory facts of one board (bytes unless named otherwise), as ``/proc`` shows them at idle."""

    mem_total: int  # /proc/meminfo MemTotal
    mem_available: int  # MemAvailable at idle: what a job can take before the kernel must reclaim or kill
    swap_total: int  # SwapTotal (zram included)
    zram_size: int  # disksize of the zram devices used as swap
    zram_algorithm: str  # their compression algorithm ("" without zram)
    cma_total: int  # CmaTotal: contiguous memory held for display, camera and video drivers (part of MemTotal)
    min_free_kbytes: int  # vm.min_free_kbytes
    overcommit_memory: int  # vm.overcommit_memory (0 heuristic, 1 always, 2 strict)
    overcommit_ratio: int  # vm.overcommit_ratio (percent; used by strict overcommit)
    oom_kill_allocating_task: int  # vm.oom_kill_allocating_task
    panic_on_oom: int  # vm.panic_on_oom

    @property
    def idle_used(self) -> int:
        """What the OS and its services hold at idle."""
        return self.mem_total - self.mem_available

    def check(self, where: str, nominal: int) -> None:
        if not 0 < self.mem_available <= self.mem_total <= nominal:
            raise ProfileError(f"{where}: [memory] needs 0 < mem_available <= mem_total <= the board's RAM")
        if min(self.swap_total, self.zram_size, self.cma_total, self.min_free_kbytes) < 0:
            raise ProfileError(f"{where}: [memory] sizes cannot be negative")

    def resized(self, nominal: int, ram: int) -> BoardMemory:
        """The same board with ``ram`` bytes: MemTotal and MemAvailable keep their shares of the board."""
        total, available = int(ram * self.mem_total / nominal), int(ram * self.mem_available / nominal)
        return replace(self, mem_total=total, mem_available=max(1, available))

    def refusal(self) -> str | None:
        """Why a board with these facts cannot be emulated faithfully, or None."""
        if self.swap_total > 0:
            kind = f"zram ({format_size(self.zram_size)}, {self.zram_algorithm})" if self.zram_size else "swap"
            return (f"the board swaps to {kind}, {format_size(self.swap_total)} in all: swapping is not modelled "
                    "(the emulated budget is a hard limit, where the board would compress and carry on before its "
                    "OOM killer came). Capture the board with swap off (`swapoff -a`; on Armbian, ENABLED=false in "
                    "/etc/default/armbian-zram-config) to emulate it, or set [memory] swap_total and zram_size "
                    "to 0 to emulate it as if it did not swap")  # fmt: skip
        if self.overcommit_memory == 2:
            return ("the board uses strict overcommit (vm.overcommit_memory = 2): allocations fail at its commit "
                    "limit rather than the OOM killer ending the job, which is not modelled")  # fmt: skip
        return None

    def as_dict(self) -> dict[str, int | str]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


MEMORY_FIELDS: dict[str, type] = {f.name: (str if f.name == "zram_algorithm" else int) for f in fields(BoardMemory)}


def nominal_memory(ram: int) -> BoardMemory:
    """A board that leaves a job all of its RAM: what a profile without ``[memory]`` stands for."""
    return BoardMemory(mem_total=ram, mem_available=ram, swap_total=0, zram_size=0, zram_algorithm="",
                       cma_total=0, min_free_kbytes=0, overcommit_memory=0, overcommit_ratio=50,
                       oom_kill_allocating_task=0, panic_on_oom=0)  # fmt: skip
