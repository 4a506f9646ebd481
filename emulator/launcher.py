"""Run one command on an emulated board and wait for it: ``mali-hil emulator run`` and the emulator's own tools.

The process is supervised as every process on a board is (:mod:`mali_hil.runtime.supervisor`: its own session,
the RAM budget enforced, leftovers killed and waited for, the OOM verdict from evidence); this module adds the
board's environment, a wall clock and captured output, and keeps the record people and scripts read.
"""

from __future__ import annotations

import os
import select
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from mali_hil.errors import MaliHilError
from mali_hil.runtime.ram import STALL_GAP, Enforcement, RamEnforcer, RamVerdict, select_enforcer
from mali_hil.runtime.supervisor import ProcessEnd, RunStatus, Supervised

if TYPE_CHECKING:
    from mali_hil.emulator.emulated_board import EmulatedBoard

__all__ = ["BoardRun", "RunStatus", "run_on_board", "run_with_budget"]

_READER_GRACE = 5.0  # seconds to drain captured output after the job ended (a stray holder of the pipe)


@dataclass(frozen=True)
class BoardRun:
    """The record of one command run on an emulated board: how it ended (one :class:`ProcessEnd`) and its output."""

    argv: tuple[str, ...]
    board: str  # profile spec, e.g. "mali-g610:3GiB"
    ram_budget: int
    timeout: float | None
    end: ProcessEnd
    stdout: str | None = None
    stderr: str | None = None

    @property
    def status(self) -> RunStatus:
        return self.end.status

    @property
    def returncode(self) -> int:
        return self.end.returncode

    @property
    def elapsed(self) -> float:
        return self.end.elapsed

    @property
    def max_rss_bytes(self) -> int:
        return self.end.max_rss_bytes

    @property
    def device(self) -> Any:
        """mali_hil.runtime.layer_stats.LayerStats from the layer, when it wrote its stats file."""
        return self.end.device

    @property
    def _memory(self) -> RamVerdict:
        assert self.end.memory is not None  # run_with_budget always runs under an enforcer
        return self.end.memory

    # peaks are sampled from /proc (see mali_hil.runtime.ram): a spike shorter than one sampling interval, such as
    # the last milliseconds before an exit, can be missed; max_rss_bytes cannot miss it but mixes in file pages
    @property
    def enforcement(self) -> Enforcement:
        return self._memory.enforcement

    @property
    def ram_limit(self) -> int:
        """The limit actually enforced: the budget, or a container's own smaller limit."""
        return self._memory.limit_bytes

    @property
    def peak_anon_bytes(self) -> int:
        return self._memory.peak_anon_bytes

    @property
    def peak_file_bytes(self) -> int:
        """mmap'd files: reported, not counted against the budget (reclaimable page cache)."""
        return self._memory.peak_file_bytes

    @property
    def peak_unified_bytes(self) -> int:
        """anon + shmem: what the budget is checked against."""
        return self._memory.peak_unified_bytes

    @property
    def max_sample_gap(self) -> float:
        """Longest seconds the enforcer went without a sample: see watchdog_stalled."""
        return self._memory.max_gap

    @property
    def watchdog_stalled(self) -> bool:
        """The watchdog was not scheduled for a while (an overloaded host), so the budget went unenforced then:
        a status of ``ok`` does not prove the job stayed within the budget. Treat as an infrastructure problem."""
        return self.enforcement is Enforcement.WATCHDOG and self.max_sample_gap > STALL_GAP

    def to_dict(self) -> dict[str, object]:
        return {
            "argv": list(self.argv),
            "board": self.board,
            "status": self.status.value,
            "returncode": self.returncode,
            "oom_evidence": None if self.end.evidence is None else self.end.evidence.value,
            "ram_budget": self.ram_budget,
            "enforcement": self.enforcement.value,
            "ram_limit": self.ram_limit,
            "peak_anon_bytes": self.peak_anon_bytes,
            "peak_file_bytes": self.peak_file_bytes,
            "peak_unified_bytes": self.peak_unified_bytes,
            "max_sample_gap": self.max_sample_gap,
            "watchdog_stalled": self.watchdog_stalled,
            "max_rss_bytes": self.max_rss_bytes,
            "elapsed": self.elapsed,
            "timeout": self.timeout,
            "device": None if self.device is None else self.device.to_dict(),
            "stdout": self.stdout,
            "stderr": self.stderr,
        }


def run_on_board(
    board: EmulatedBoard,
    argv: Sequence[str],
    *,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    capture_output: bool = False,
    enforcer: RamEnforcer | None = None,
) -> BoardRun:
    """Run ``argv`` on ``board`` and wait for it; never raises for what the command does, only for setup.

    ``env`` adds variables to this process's environment (the board's own variables win over both).
    ``enforcer`` defaults to :func:`mali_hil.runtime.ram.select_enforcer` for ``board.ram_budget``.
    """
    return run_with_budget(
        argv,
        board.ram_budget,
        board_env=board.environ(),
        board_name=board.profile.spec,
        timeout=timeout,
        env=env,
        cwd=cwd,
        capture_output=capture_output,
        enforcer=enforcer,
    )


def run_with_budget(
    argv: Sequence[str],
    ram_budget: int,
    *,
    board_env: Mapping[str, str] | None = None,
    board_name: str = "",
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    capture_output: bool = False,
    enforcer: RamEnforcer | None = None,
) -> BoardRun:
    """:func:`run_on_board` without a board: the RAM budget, clock and classification alone.

    For processes that need no OpenCL layer (and for testing the RAM machinery on plain processes).
    """
    if not argv:
        raise MaliHilError("nothing to run: the command is empty")
    if timeout is not None and not 0 < timeout <= threading.TIMEOUT_MAX:  # 1e300: no timer can hold it
        raise MaliHilError(f"timeout must be a positive number of seconds a timer can hold, got {timeout}")
    pipe = subprocess.PIPE if capture_output else None
    process = Supervised(
        argv,
        env={**os.environ, **(env or {}), **(board_env or {})},
        enforcer=enforcer or select_enforcer(ram_budget),
        cwd=cwd,
        stdout=pipe,
        stderr=pipe,
    )
    readers = [_Reader(stream) for stream in (process.proc.stdout, process.proc.stderr) if stream is not None]
    clock = threading.Timer(timeout, process.kill, kwargs={"timed_out": True}) if timeout is not None else None
    if clock is not None:
        clock.daemon = True
        clock.start()
    try:
        process.wait()
    finally:
        if clock is not None:
            clock.cancel()
        end = process.end()
        for reader in readers:
            reader.join(_READER_GRACE)
    out, err = (readers[0].text(), readers[1].text()) if capture_output else (None, None)
    return BoardRun(tuple(argv), board_name, ram_budget, timeout, end, out, err)


class _Reader:
    """Drains one pipe in a thread so a chatty job never blocks on a full pipe.

    It polls instead of blocking in read(): a process that escaped the kill may hold the pipe open forever,
    and a thread blocked in read() could then be neither stopped nor its stream closed.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream, self._chunks = stream, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        fd = self._stream.fileno()
        while not self._stop.is_set():
            if select.select([fd], [], [], 0.05)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return
                self._chunks.append(chunk)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        self._stop.set()
        self._thread.join()  # returns within one poll period now
        self._stream.close()

    def text(self) -> str:
        return b"".join(self._chunks).decode("utf-8", errors="replace")
