"""Keeping a job inside its board's RAM, as a Mali board's kernel would: SIGKILL when it passes the budget.

On a Mali board the OOM killer ends a loader that asks for too much ("Killed", exo issue 110); it never
sees an OpenCL error. PoCL enforces no cap of its own (REFERENCE section 3), so the emulator does it here,
one of three ways, all behind :class:`RamEnforcer` (``prepare`` before the spawn, ``start``, ``poll``, ``stop``):

- ``cgroup``: the kernel enforces ``memory.max`` in a child of a cgroup v2 directory the *user* delegated
  to us (``MALI_HIL_CGROUP`` or an explicit path). Exact and instant. We never touch any other cgroup.
- ``container``: we run inside a container whose own memory limit is at most the budget (``docker run
  --memory``); the kernel already enforces it. We only watch and read its ``oom_kill`` counter.
- ``watchdog`` (default; what CI uses): a thread samples the job's tree in ``/proc`` and SIGKILLs its
  process group once anon + shmem passes the budget. Honest limit: it can only see memory at its samples,
  so a job can overshoot by what it allocates between one sample and the kill. The interval adapts to
  bound that: the next sample comes before the job could use up its remaining headroom at
  ``ASSUMED_RATE`` (or the rate it was actually seen growing at, if faster), within
  ``[MIN_INTERVAL, MAX_INTERVAL]``. The overshoot is therefore about rate x (MIN_INTERVAL + the cost of
  one sample); ``tests/runtime/test_ram_budget.py`` measures it.

  That bound holds only while the watchdog thread gets a CPU when it asks for one. On a virtual machine whose
  host is slow to back guest memory, we measured a sleeping thread in the parent woken up to ~0.5 s late
  while the job faulted in 1 GiB (the job kept running): for that long nothing is enforced, and no user-space
  poller can prevent it. So every verdict carries ``max_gap``, the longest time between two samples, and a
  gap above ``STALL_GAP`` marks the run's enforcement as unreliable. When it must hold, use a cgroup.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import itertools
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from mali_hil.errors import BudgetError
from mali_hil.runtime.memory import MemoryPeaks, read_tree_memory, tree_pids

CGROUP_ENV = "MALI_HIL_CGROUP"

# Faster than one core can fault in fresh pages here (about 2 GB/s measured with a 256 MiB memset, REFERENCE
# section 10 has 11 GB/s only for copies into pages that already exist), so a burst from idle is covered too.
ASSUMED_RATE = 4e9  # bytes per second
# Near the budget: Event.wait() resolves about 1 ms on Linux and one /proc sample of a small tree costs ~1 ms
# (a scan of /proc/*/stat, since the children files are not on every kernel), so a shorter sleep buys little.
MIN_INTERVAL = 0.001
# Far from the budget: one sample per 20 ms keeps the watchdog near 5 % of one core while still catching a
# 4 GB/s burst within ~80 MB, which the shrinking interval then closes in on.
MAX_INTERVAL = 0.020
# Finding the tree's members means a scan of every process's /proc/PID/stat (about 3 ms on a busy machine, and
# the largest cost of a whole `mali-hil run` when done at every sample: 28 % of its busy samples). The known
# members are read at every sample; the scan for new ones runs at least this often, and at every sample once the
# tree is within RESCAN_HEADROOM of the budget, where a member missed for a moment could decide the verdict.
RESCAN_INTERVAL = 0.050
RESCAN_HEADROOM = 0.10
# A gap between samples this long (5x the longest planned interval) means the watchdog was not scheduled
STALL_GAP = 0.100


class Enforcement(enum.StrEnum):
    """What keeps a job within its board's RAM."""

    WATCHDOG = "watchdog"  # our polling thread SIGKILLs past the budget (can lag: see RamVerdict.max_gap)
    CGROUP = "cgroup"  # the kernel, through memory.max of a cgroup delegated to us
    CONTAINER = "container"  # the kernel, through the memory limit of the container we run in
    KERNEL = "kernel"  # no budget of ours: the machine's own RAM and OOM killer (a real board, --device=local)


@dataclass(frozen=True)
class RamVerdict:
    """What an enforcer saw of one job: its peaks (sampled from /proc), whether it was killed for RAM, and how."""

    enforcement: Enforcement
    limit_bytes: int  # the limit actually enforced (a container's own limit may be below the board's budget)
    peak_anon_bytes: int
    peak_file_bytes: int  # mmap'd files: reported, not counted (the kernel reclaims clean page cache first)
    peak_unified_bytes: int  # anon + shmem in one sample: what the limit is checked against
    killed: bool  # the job was killed because it passed the limit (by us, or by the kernel's OOM killer)
    samples: int
    max_gap: float  # longest seconds between two samples (or from start to the first): the blind spot
    kernel_peak_bytes: int | None = None  # cgroup memory.peak (includes page cache); None where there is none

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "enforcement": self.enforcement.value}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> RamVerdict:
        return cls(**{**data, "enforcement": Enforcement(data["enforcement"])})  # type: ignore[arg-type]


class RamEnforcer(Protocol):
    """One way of keeping a job within ``limit`` bytes of unified memory."""

    name: Enforcement
    limit: int

    def prepare(self) -> Callable[[], None] | None:
        """Set up before the spawn; returns a hook to run in the child between fork and exec, or None."""
        ...

    def start(self, pid: int) -> None:
        """Watch ``pid`` (a process-group leader) and its descendants."""
        ...

    def poll(self) -> RamVerdict:
        """What has been seen so far; never blocks."""
        ...

    def stop(self) -> RamVerdict:
        """Stop watching (call once the job's leader has exited, before it is reaped) and clean up."""
        ...


def kill_job(pid: int, extra: Iterable[int] = (), wait: float = 0.0) -> bool:
    """SIGKILL the job led by ``pid``: its process group, every living process of its tree and session, and
    ``extra`` pids. With ``wait``, keep at it for up to that many seconds until none is left alive (a killed
    process needs a moment to give back its memory); returns whether none is.

    Never signals the caller's own group, so watching a process that shares our group cannot kill us.
    """
    with contextlib.suppress(ProcessLookupError):
        pgid = os.getpgid(pid)
        if pgid != os.getpgrp():
            os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + wait
    targets = {pid, *extra}
    while True:
        targets.update(tree_pids(pid, living=True))
        for other in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(other, signal.SIGKILL)
        left = tree_pids(pid, living=True)
        if not left or time.monotonic() >= deadline:
            return not left
        targets = set()
        time.sleep(0.005)


class _Sampler:
    """A thread sampling a process tree's memory, with an interval that shrinks as usage nears ``limit``.

    With ``kill`` it SIGKILLs the tree on the first sample above ``limit``, as the OOM killer would.
    """

    def __init__(self, limit: int, kill: bool, min_interval: float, max_interval: float, rate: float) -> None:
        self.limit, self.kill = limit, kill
        self.min_interval, self.max_interval, self.rate = min_interval, max_interval, rate
        self.peaks = MemoryPeaks()
        self.samples = 0
        self.max_gap = 0.0
        self.killed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, pid: int) -> None:
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(pid,), name=f"mali-hil-ram-{pid}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def next_interval(self, unified: int, growth_rate: float) -> float:
        headroom = max(0, self.limit - unified)
        wait = headroom / max(self.rate, growth_rate)
        return min(self.max_interval, max(self.min_interval, wait))

    def _run(self, pid: int) -> None:
        last_unified, last_time = 0, self._started
        pids: list[int] = []
        last_scan = -RESCAN_INTERVAL
        while not self._stop.is_set():
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - last_time)
            near = last_unified >= self.limit * (1 - RESCAN_HEADROOM)
            try:
                if near or now - last_scan >= RESCAN_INTERVAL:
                    pids, last_scan = tree_pids(pid), now
                sample = read_tree_memory(pid, pids)  # members gone since the scan count as zero
            except ProcessLookupError:
                return  # reaped: nothing left to watch
            self.peaks = self.peaks.update(sample)
            self.samples += 1
            if self.kill and sample.unified > self.limit:
                kill_job(pid, tree_pids(pid))  # every member now, not only those of the last scan
                self.killed = True
                return
            growth = (sample.unified - last_unified) / max(now - last_time, 1e-6)
            last_unified, last_time = sample.unified, now
            self._stop.wait(self.next_interval(sample.unified, growth))
        # asked to stop (the job ended): a thread that was stalled meanwhile only notices now, so count that too
        self.max_gap = max(self.max_gap, time.monotonic() - last_time)

    def verdict(self, name: Enforcement, killed: bool | None = None, kernel_peak: int | None = None) -> RamVerdict:
        peaks = self.peaks
        return RamVerdict(
            enforcement=name,
            limit_bytes=self.limit,
            peak_anon_bytes=peaks.anon_bytes,
            peak_file_bytes=peaks.file_bytes,
            peak_unified_bytes=peaks.unified_bytes,
            killed=self.killed if killed is None else killed,
            samples=self.samples,
            max_gap=self.max_gap,
            kernel_peak_bytes=kernel_peak,
        )


class WatchdogEnforcer:
    """The portable default: a polling thread that SIGKILLs the job's process group above the budget."""

    name = Enforcement.WATCHDOG

    def __init__(
        self,
        budget: int,
        *,
        min_interval: float = MIN_INTERVAL,
        max_interval: float = MAX_INTERVAL,
        rate: float = ASSUMED_RATE,
    ) -> None:
        self.limit = budget
        self._sampler = _Sampler(budget, True, min_interval, max_interval, rate)

    def prepare(self) -> None:
        return None

    def start(self, pid: int) -> None:
        self._sampler.start(pid)

    def poll(self) -> RamVerdict:
        return self._sampler.verdict(self.name)

    def stop(self) -> RamVerdict:
        self._sampler.stop()
        return self._sampler.verdict(self.name)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except OSError:
        return None


def _oom_kills(events: Path) -> int:
    """The ``oom_kill`` count in a cgroup's memory.events (v2) or memory.oom_control (v1)."""
    for line in (_read_text(events) or "").splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0


# (limit file, OOM counter file) of the cgroup a container sees as its root, v2 then v1
_CONTAINER_FILES = (
    (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.events")),
    (Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"), Path("/sys/fs/cgroup/memory/memory.oom_control")),
)


@functools.cache  # a process does not change containers; read per job otherwise (twice)
def _container_limit() -> tuple[int, Path] | None:
    from mali_hil.runtime.memory import host_ram_bytes

    for limit_file, events in _CONTAINER_FILES:
        text = _read_text(limit_file)
        # v2 says "max"; v1 says a number near 2**63; either way, a limit above the host's RAM limits nothing
        if text and text.isdigit() and int(text) < host_ram_bytes():
            return int(text), events
    return None


def container_oom_kills() -> int | None:
    """The OOM-kill count of the memory cgroup of the container we run in, or None outside one."""
    found = _container_limit()
    return _oom_kills(found[1]) if found else None


def container_memory_limit() -> int | None:
    """The memory limit of the container we run in (``docker run --memory``), or None outside one."""
    found = _container_limit()
    return found[0] if found else None


class ContainerEnforcer:
    """Nothing to enforce: the container's own limit (at most the budget) makes the kernel OOM-kill the job."""

    name = Enforcement.CONTAINER

    def __init__(self, limit: int, events: Path) -> None:
        self.limit, self._events = limit, events
        self._sampler = _Sampler(limit, False, MIN_INTERVAL, MAX_INTERVAL, ASSUMED_RATE)
        self._baseline = 0

    def prepare(self) -> None:
        self._baseline = _oom_kills(self._events)

    def start(self, pid: int) -> None:
        self._sampler.start(pid)

    def poll(self) -> RamVerdict:
        # the counter is the whole container's: another process killed meanwhile would count too, but the
        # job is by far the largest process in a harness container, so it is the one the kernel picks
        return self._sampler.verdict(self.name, killed=_oom_kills(self._events) > self._baseline)

    def stop(self) -> RamVerdict:
        self._sampler.stop()
        return self.poll()


_HOW_TO_DELEGATE = (
    "to let mali-hil use one, start a shell in a delegated scope and give it a leaf of its own:\n"
    "  systemd-run --user --scope -p Delegate=yes bash\n"
    "  d=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)\n"
    "  mkdir $d/shell && echo $$ > $d/shell/cgroup.procs && echo +memory > $d/cgroup.subtree_control\n"
    "  export MALI_HIL_CGROUP=$d\n"
    "or run mali-hil in a container started with `docker run --memory=SIZE`"
)


def check_delegated_cgroup(path: Path) -> Path:
    """Check that ``path`` is a cgroup v2 directory we may create memory-limited children in; enable
    the memory controller for its children if it is not yet (only possible while it holds no process)."""
    where = f"{CGROUP_ENV}={path}"
    if not (path / "cgroup.controllers").is_file():
        raise BudgetError(f"{where} is not a cgroup v2 directory (no cgroup.controllers); {_HOW_TO_DELEGATE}")
    if "memory" not in (_read_text(path / "cgroup.controllers") or "").split():
        raise BudgetError(f"{where}: the memory controller is not delegated to it; {_HOW_TO_DELEGATE}")
    if not os.access(path, os.W_OK) or not os.access(path / "cgroup.subtree_control", os.W_OK):
        raise BudgetError(f"{where} is not writable by this user; {_HOW_TO_DELEGATE}")
    if "memory" not in (_read_text(path / "cgroup.subtree_control") or "").split():
        try:
            (path / "cgroup.subtree_control").write_text("+memory", encoding="ascii")
        except OSError as exc:  # EBUSY: processes live in it, and a cgroup with controlled children may hold none
            raise BudgetError(
                f"{where}: cannot enable the memory controller for its children ({exc.strerror}); "
                f"move the processes in it into a leaf first; {_HOW_TO_DELEGATE}"
            ) from None
    return path


_job_numbers = itertools.count()


class CgroupEnforcer:
    """The kernel enforces the budget: ``memory.max`` on a fresh child of a cgroup the user delegated to us."""

    name = Enforcement.CGROUP

    def __init__(self, budget: int, parent: str | Path) -> None:
        self.limit = budget
        self.parent = check_delegated_cgroup(Path(parent))
        self.path = self.parent / f"mali-hil-{os.getpid()}-{next(_job_numbers)}"
        self._sampler = _Sampler(budget, False, MIN_INTERVAL, MAX_INTERVAL, ASSUMED_RATE)

    def prepare(self) -> Callable[[], None]:
        self.path.mkdir()
        (self.path / "memory.max").write_text(str(self.limit), encoding="ascii")
        # no swap (a board has none worth counting) and kill the whole job at once, like SIGKILL to its group
        for name, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
            with contextlib.suppress(FileNotFoundError):  # swap accounting may be off; oom.group needs 4.19
                (self.path / name).write_text(value, encoding="ascii")
        procs = os.fsencode(self.path / "cgroup.procs")

        def join_cgroup() -> None:
            # runs in the forked child before exec: raw syscalls only, no locks another thread may have held
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)

        return join_cgroup

    def start(self, pid: int) -> None:
        self._sampler.start(pid)

    def poll(self) -> RamVerdict:
        peak = _read_text(self.path / "memory.peak")  # kernel >= 5.19
        return self._sampler.verdict(
            self.name,
            killed=_oom_kills(self.path / "memory.events") > 0,
            kernel_peak=int(peak) if peak and peak.isdigit() else None,
        )

    def stop(self) -> RamVerdict:
        self._sampler.stop()
        verdict = self.poll()
        self._remove()
        return verdict

    def _remove(self) -> None:
        with contextlib.suppress(OSError):  # cgroup.kill needs 5.14; without it the launcher's killpg remains
            (self.path / "cgroup.kill").write_text("1", encoding="ascii")
        deadline = time.monotonic() + 2.0
        while True:
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:  # EBUSY until the last process in it has exited
                if time.monotonic() > deadline:
                    return  # leave it (empty cgroups cost nothing); its name says who made it
                time.sleep(0.01)


def select_enforcer(budget: int, cgroup: str | Path | None = None) -> RamEnforcer:
    """A delegated cgroup if one is given (argument, else ``MALI_HIL_CGROUP``); else the container's own
    limit if it is at most ``budget``; else the watchdog."""
    parent = cgroup or os.environ.get(CGROUP_ENV)
    if parent:
        return CgroupEnforcer(budget, parent)
    container = _container_limit()
    if container is not None and container[0] <= budget:
        return ContainerEnforcer(*container)
    return WatchdogEnforcer(budget)


def cgroup_status() -> str:
    """One paragraph for ``mali-hil doctor``: which enforcement a run would get here, and how to get a cgroup."""
    parent = os.environ.get(CGROUP_ENV)
    if parent:
        try:
            check_delegated_cgroup(Path(parent))
        except BudgetError as exc:
            return f"cgroup: NOT usable: {exc}"
        return f"cgroup: delegated cgroup v2 at {parent} is usable; runs get enforcement 'cgroup' (kernel memory.max)"
    from mali_hil.sizes import format_size

    limit = container_memory_limit()
    if limit is not None:
        return (
            f"cgroup: none delegated, but this container has a memory limit of {format_size(limit)}: runs with a "
            f"budget of at least that get enforcement 'container', smaller budgets the watchdog"
        )
    return (
        f"cgroup: none delegated ({CGROUP_ENV} unset); runs get enforcement 'watchdog' (polling /proc); "
        f"{_HOW_TO_DELEGATE}"
    )
