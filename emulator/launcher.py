"""Run a command on an emulated board: the Mali layer in its environment, its RAM budget enforced, a clock.

The job gets its own session (so its own process group): one ``killpg`` ends all of it, the session finds its
processes even after their parent exited, and a Ctrl-C meant for the harness does not reach it. Whatever ends
the job, the launcher SIGKILLs what is left of it and waits for that to exit before returning, so a run never
leaves processes (or their memory) behind.

The leader is waited for with ``waitid(WNOWAIT)`` and only reaped at the end: while it is an unreaped
zombie its pid cannot be reused, so every ``killpg`` (watchdog, timeout, clean-up) hits the job's group and
nothing else.
"""

from __future__ import annotations

import enum
import os
import select
import signal
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from emulator.errors import BackendError, MaliHilError
from emulator.ram import STALL_GAP, RamEnforcer, RamVerdict, kill_job, select_enforcer

if TYPE_CHECKING:
    from emulator.board import EmulatedBoard

STATS_FILE_NAME = "layer-stats"
_CLEANUP_WAIT = 5.0  # seconds for SIGKILLed leftovers to finish exiting (a big process unmaps for a while)
_READER_GRACE = 5.0  # seconds to drain captured output after the job ended (a stray holder of the pipe)


class RunStatus(enum.StrEnum):
    """How a run on a board ended."""

    OK = "ok"  # exited with code 0
    FAILED = "failed"  # exited nonzero, or was killed by a signal that is not an OOM kill
    OOM_KILLED = "oom-killed"  # passed the board's RAM (our watchdog, the cgroup/container, or the layer's own kill)
    TIMEOUT = "timeout"  # still running at the wall-clock limit, so we SIGKILLed it


@dataclass(frozen=True)
class BoardRun:
    """The record of one command run on an emulated board."""

    argv: tuple[str, ...]
    board: str  # profile spec, e.g. "mali-g610:3GiB"
    status: RunStatus
    returncode: int  # as subprocess reports it: negative for a signal (-9 = SIGKILL)
    ram_budget: int
    enforcement: str  # "watchdog", "cgroup" or "container" (see emulator.ram)
    ram_limit: int  # the limit actually enforced: the budget, or a container's own smaller limit
    # peaks are sampled from /proc (see emulator.ram): a spike shorter than one sampling interval, such as the
    # last milliseconds before an exit, can be missed; max_rss_bytes cannot miss it but mixes in file pages
    peak_anon_bytes: int
    peak_file_bytes: int  # mmap'd files: reported, not counted against the budget (reclaimable page cache)
    peak_unified_bytes: int  # anon + shmem: what the budget is checked against
    max_sample_gap: float  # longest seconds the enforcer went without a sample: see watchdog_stalled
    max_rss_bytes: int  # the kernel's high-water RSS of the leader (and the children it reaped): cannot miss a spike
    elapsed: float  # seconds from spawn to the leader's exit
    timeout: float | None
    device: Any = None  # emulator.stats.LayerStats from the layer, when it wrote its stats file
    stdout: str | None = None
    stderr: str | None = None

    @property
    def watchdog_stalled(self) -> bool:
        """The watchdog was not scheduled for a while (an overloaded host), so the budget went unenforced then:
        a status of ``ok`` does not prove the job stayed within the budget. Treat as an infrastructure problem."""
        return self.enforcement == "watchdog" and self.max_sample_gap > STALL_GAP

    def to_dict(self) -> dict[str, object]:
        return {
            "argv": list(self.argv),
            "board": self.board,
            "status": self.status.value,
            "returncode": self.returncode,
            "ram_budget": self.ram_budget,
            "enforcement": self.enforcement,
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
    ``enforcer`` defaults to :func:`emulator.ram.select_enforcer` for ``board.ram_budget``.
    """
    with tempfile.TemporaryDirectory(prefix="mali-hil-run-") as tmp:
        stats_file = Path(tmp) / STATS_FILE_NAME
        return run_with_budget(
            argv,
            board.ram_budget,
            board_env=board.environ(stats_file),
            board_name=board.profile.spec,
            stats_file=stats_file,
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
    stats_file: Path | None = None,
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
    if timeout is not None and timeout <= 0:
        raise MaliHilError(f"timeout must be a positive number of seconds, got {timeout}")
    enforcer = enforcer or select_enforcer(ram_budget)
    full_env = {**os.environ, **(env or {}), **(board_env or {})}
    preexec = enforcer.prepare()
    pipe = subprocess.PIPE if capture_output else None
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            list(argv), env=full_env, cwd=cwd, stdout=pipe, stderr=pipe, start_new_session=True, preexec_fn=preexec
        )
    except subprocess.SubprocessError as exc:  # our preexec hook failed in the child (e.g. joining the cgroup)
        enforcer.stop()
        raise BackendError(f"could not start {argv[0]!r} under enforcement {enforcer.name!r}: {exc}") from None
    except OSError as exc:
        enforcer.stop()
        raise BackendError(f"could not start {argv[0]!r}: {exc}") from None
    readers = [_Reader(stream) for stream in (proc.stdout, proc.stderr) if stream is not None]
    enforcer.start(proc.pid)
    clock = _Clock(proc.pid, timeout, enforcer)
    try:
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped: its pgid stays ours
        elapsed = time.monotonic() - started
    finally:
        clock.cancel()
        verdict = enforcer.stop()
        # leftovers of the job (or all of it, when unwinding from Ctrl-C); wait until their memory is back, so
        # the next job on this machine starts from a clean slate
        kill_job(proc.pid, wait=_CLEANUP_WAIT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen knows it is reaped
        for reader in readers:
            reader.join(_READER_GRACE)
    returncode = proc.returncode
    device = _read_device_stats(stats_file)
    run_status = _classify(returncode, verdict, clock.fired, device is not None and device.failed_allocations > 0)
    out, err = (readers[0].text(), readers[1].text()) if capture_output else (None, None)
    return BoardRun(
        argv=tuple(argv),
        board=board_name,
        status=run_status,
        returncode=returncode,
        ram_budget=ram_budget,
        enforcement=verdict.enforcement,
        ram_limit=verdict.limit_bytes,
        peak_anon_bytes=verdict.peak_anon_bytes,
        peak_file_bytes=verdict.peak_file_bytes,
        peak_unified_bytes=verdict.peak_unified_bytes,
        max_sample_gap=verdict.max_gap,
        max_rss_bytes=usage.ru_maxrss * 1024,  # Linux reports kilobytes
        elapsed=elapsed,
        timeout=timeout,
        device=device,
        stdout=out,
        stderr=err,
    )


def _classify(returncode: int, verdict: RamVerdict, timed_out: bool, layer_refused: bool) -> RunStatus:
    if verdict.killed:
        return RunStatus.OOM_KILLED
    if timed_out:
        return RunStatus.TIMEOUT
    # A SIGKILL nobody here sent: the layer raises it on itself for a profile whose OOM failure is "oom-kill",
    # after counting the refused allocation and writing its stats file (a SIGKILL runs no exit handlers, so the
    # file cannot come from a normal exit). Without that evidence it was someone else's kill: a plain failure.
    if returncode == -signal.SIGKILL and layer_refused:
        return RunStatus.OOM_KILLED
    return RunStatus.OK if returncode == 0 else RunStatus.FAILED


def _read_device_stats(stats_file: Path | None) -> Any:
    if stats_file is None or not stats_file.exists():
        return None
    try:
        from emulator.stats import read_stats_file
    except ImportError:
        return None
    try:
        return read_stats_file(stats_file)
    except (MaliHilError, OSError, ValueError) as exc:
        # a job killed mid-write may leave a torn file: the run's verdict still stands without device numbers
        warnings.warn(f"ignoring unreadable layer stats file {stats_file}: {exc}", RuntimeWarning, stacklevel=3)
        return None


class _Clock:
    """SIGKILLs the job's group at its deadline, unless the job already ended or was OOM-killed first."""

    def __init__(self, pid: int, timeout: float | None, enforcer: RamEnforcer) -> None:
        self.fired = False
        self._pid, self._enforcer = pid, enforcer
        self._lock = threading.Lock()
        self._done = False
        self._timer = threading.Timer(timeout, self._fire) if timeout is not None else None
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._done or self._enforcer.poll().killed:
                return
            self.fired = True
            kill_job(self._pid)

    def cancel(self) -> None:
        with self._lock:  # after this, _fire can no longer kill: the leader is about to be reaped
            self._done = True
        if self._timer is not None:
            self._timer.cancel()


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
