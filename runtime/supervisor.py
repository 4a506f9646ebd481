"""One supervisor for every process mali-hil runs on a board: start it apart, watch its RAM, say how it ended.

Both ``mali-hil emulator run`` (one command, waited for) and the warm load worker (one long-lived process
that speaks a protocol on its pipes) run under a :class:`Supervised` process, so there is one place that
decides whether a death was an OOM kill and one record of it (:class:`ProcessEnd`).

The process gets its own session (so its own process group): one ``killpg`` ends all of it, the session finds
its processes even after their parent exited, and a Ctrl-C meant for the harness does not reach it. Whatever
ends it, the supervisor SIGKILLs what is left of its tree and waits until that has exited (and given back its
memory) before it returns the record, so nothing outlives it.

A process tree ends with its leader: a watcher thread waits (``waitid(WNOWAIT)``) for the leader's exit and then
kills what it left, so a child that a crashed leader forked cannot keep the leader's pipes open and make its
death look like a hang until some timeout. The leader also gets ``PR_SET_PDEATHSIG``, so a harness that is
itself SIGKILLed does not leave a worker stuck in a job running forever.

The leader is never reaped before :meth:`Supervised.end`: exits are observed with ``waitid(WNOWAIT)``, and while
the leader is an unreaped zombie its pid cannot be reused, so every kill (watchdog, timeout, clean-up) hits the
process's own group and nothing else.

An OOM kill needs evidence, never a guess from the exit code alone; the supervisor gathers it and
:func:`mali_hil.runtime.verdict.decide` judges it. A SIGKILL counts as one when:
- the RAM enforcer killed it (our watchdog) or saw the kernel kill in its cgroup or container;
- the OpenCL layer refused device memory and wrote its stats file just before killing its own process (the
  profiles whose driver fails with ``oom-kill``);
- the kernel's own OOM-kill counter (``/proc/vmstat``) went up while the process ran (a board or host with
  no budget of ours, where the kernel's OOM killer is the enforcement).
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import functools
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mali_hil.errors import BackendError, MaliHilError
from mali_hil.runtime.layer_stats import STATS_FILE_ENV
from mali_hil.runtime.oom_counters import kernel_oom_kills, rise
from mali_hil.runtime.ram import RamEnforcer, RamVerdict, kill_job
from mali_hil.runtime.verdict import Evidence, OomEvidence, Status, Verdict, decide, describe_oom

CLEANUP_WAIT = 5.0  # seconds for SIGKILLed leftovers to finish exiting (a big process unmaps for a while)
_PR_SET_PDEATHSIG = 1
#: flags for every Python that mali-hil starts itself (workers, probes, the board's supervisor): ``-P`` keeps the
#: current folder off ``sys.path``, so a ``./base64.py`` there cannot stand in for the standard library. Not
#: ``-I``: that would also drop PYTHONPATH and the user's site-packages, where users' loaders may live.
ISOLATED = ("-P",)


def safe_python(executable: str) -> tuple[list[str], dict[str, str]]:
    """The interpreter's argv and the environment that keep the current folder off ``sys.path``, for it and for
    every Python it starts (``-P`` alone does not pass to pytest-xdist's workers)."""
    return [executable, *ISOLATED], {**os.environ, "PYTHONSAFEPATH": "1"}


class RunStatus(enum.StrEnum):
    """How a supervised process ended."""

    OK = "ok"  # exited with code 0
    FAILED = "failed"  # exited nonzero, or was killed by a signal that is not an OOM kill
    OOM_KILLED = "oom-killed"  # killed for memory, with evidence (see OomEvidence)
    TIMEOUT = "timeout"  # still running at its deadline, so the supervisor killed it
    LOST = "lost"  # the transport lost it (a dropped connection): how it ended is unknown, it was not seen to fail

    @classmethod
    def of(cls, verdict: Verdict) -> RunStatus:
        """A process's view of the one verdict: an error of the job is a process that failed."""
        return _RUN_STATUS.get(verdict.status, cls.FAILED)


_RUN_STATUS = {Status.OK: RunStatus.OK, Status.OOM_KILLED: RunStatus.OOM_KILLED, Status.TIMEOUT: RunStatus.TIMEOUT,
               Status.INFRA_ERROR: RunStatus.LOST}  # fmt: skip


@dataclass(frozen=True)
class ProcessEnd:
    """The one record of how a supervised process ended, with the peaks of its memory."""

    status: RunStatus
    returncode: int  # as subprocess reports it: negative for a signal (-9 = SIGKILL)
    evidence: OomEvidence | None  # set exactly when status is OOM_KILLED
    memory: RamVerdict | None  # what the RAM enforcer saw; None where no budget of ours applied
    max_rss_bytes: int  # the kernel's high-water RSS of the leader (and the children it reaped): cannot miss a spike
    elapsed: float  # seconds from spawn to the leader's exit
    device: Any = None  # mali_hil.runtime.layer_stats.LayerStats, when the OpenCL layer wrote its stats file

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON, for a supervisor on another machine to say how its process ended."""
        return {
            "status": self.status.value,
            "returncode": self.returncode,
            "evidence": None if self.evidence is None else self.evidence.value,
            "memory": None if self.memory is None else self.memory.to_dict(),
            "max_rss_bytes": self.max_rss_bytes,
            "elapsed": self.elapsed,
            "device": None if self.device is None else self.device.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProcessEnd:
        from mali_hil.runtime.layer_stats import LayerStats
        from mali_hil.runtime.ram import RamVerdict

        memory, device = data.get("memory"), data.get("device")
        return cls(
            status=RunStatus(data["status"]),
            returncode=int(data["returncode"]),
            evidence=None if data.get("evidence") is None else OomEvidence(data["evidence"]),
            memory=None if memory is None else RamVerdict.from_dict(memory),
            max_rss_bytes=int(data.get("max_rss_bytes") or 0),
            elapsed=float(data.get("elapsed") or 0.0),
            device=None if device is None else LayerStats.from_mapping(device, "a remote supervisor"),
        )

    @classmethod
    def judged(cls, evidence: Evidence, max_rss_bytes: int, elapsed: float) -> ProcessEnd:
        """The end that the one verdict gives ``evidence`` (its RAM verdict and layer counters kept as figures)."""
        verdict = decide(evidence)
        return cls(RunStatus.of(verdict), evidence.returncode if evidence.returncode is not None else -1,
                   verdict.oom_evidence, evidence.enforcer, max_rss_bytes, elapsed, evidence.layer)  # fmt: skip

    @classmethod
    def lost(cls, returncode: int, memory: RamVerdict | None, elapsed: float) -> ProcessEnd:
        """The end of a process whose transport went away before it said how the process ended."""
        return cls.judged(Evidence(returncode=returncode, lost=True, enforcer=memory), 0, elapsed)

    def evidence_of(self, **more: Any) -> Evidence:
        """This end as evidence for a judge further out (the harness's device, the container engine's word added):
        the verdict already reached is passed on as its word."""
        return Evidence(**{"returncode": self.returncode, "timed_out": self.status is RunStatus.TIMEOUT,
                           "lost": self.status is RunStatus.LOST, "enforcer": self.memory, "word": self.evidence,
                           "layer": self.device, **more})  # fmt: skip

    def describe_oom(self) -> str:
        """Why this end counts as an OOM kill, for people (empty when it does not)."""
        return describe_oom(self.evidence, self.memory)


def with_parent_death_signal(hook: Callable[[], None] | None) -> Callable[[], None] | None:
    """``hook`` plus ``PR_SET_PDEATHSIG(SIGKILL)`` in the child, so it dies with the harness (Linux only).

    The signal is tied to the *thread* that forked the child, not its process: a worker spawned from a thread
    that later ends would be killed with it. So only children spawned from the main thread get it (the plugin,
    the CLI and the board's supervisor all spawn from there); others rely on their stdin's end instead.
    """
    prctl = _prctl()
    if threading.current_thread() is not threading.main_thread() or prctl is None:
        return hook
    parent = os.getpid()

    def child() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the harness died before the line above took effect
            os._exit(137)
        if hook is not None:
            hook()

    return child


@functools.cache
def _prctl() -> Any:
    """libc's prctl, looked up in the parent (nothing is looked up between fork and exec); None off Linux."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


class Supervised:
    """A process started in its own session under a RAM enforcer (or none: the machine's own OOM killer).

    Call :meth:`end` exactly once, after the process exited or was killed; it reaps the leader, cleans up and
    returns the :class:`ProcessEnd`. Nothing else may wait for the process (``Popen.poll`` would reap it).
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        enforcer: RamEnforcer | None = None,
        cwd: str | os.PathLike[str] | None = None,
        stdin: int | IO[Any] | None = None,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
        layer_stats: bool = True,
    ) -> None:
        if not argv:
            raise MaliHilError("nothing to run: the command is empty")
        self.argv = tuple(argv)
        self._enforcer = enforcer
        self._lock = threading.Lock()
        self._ended: ProcessEnd | None = None
        self._reaped = False  # set under _lock with the reaping: no kill may follow, the pid may be reused then
        self._timed_out = False
        # a private folder (0700, unpredictable name) for the layer's stats file: removed by end()
        self._private = Path(tempfile.mkdtemp(prefix="mali-hil-proc-")) if layer_stats else None
        self._layer_wrote_exit_file = False  # set by _read_layer_stats
        full_env = dict(env)
        if self._private is not None:
            full_env[STATS_FILE_ENV] = str(self._private / "layer-stats.json")
        preexec = with_parent_death_signal(enforcer.prepare() if enforcer is not None else None)
        self._oom_kills_before = kernel_oom_kills()
        self._started = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                list(argv), env=full_env, cwd=cwd, stdin=stdin, stdout=stdout, stderr=stderr,
                start_new_session=True, preexec_fn=preexec,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:  # SubprocessError: the preexec hook failed in the child
            self._cleanup_private()
            if enforcer is not None:
                enforcer.stop()
            how = f" under enforcement {enforcer.name!r}" if enforcer is not None else ""
            raise BackendError(f"could not start {argv[0]!r}{how}: {exc}") from None
        if enforcer is not None:
            enforcer.start(self.proc.pid)
        watcher = threading.Thread(target=self._end_tree_with_leader, name=f"mali-hil-leader-{self.pid}", daemon=True)
        watcher.start()

    def _end_tree_with_leader(self) -> None:
        """Kill the tree as soon as the leader exits: its children (a loader that forked, then crashed) would
        otherwise hold its stdout open, and the harness would see a hang instead of a death."""
        if self._reaped:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOWAIT)
        self.kill()  # a no-op once end() has reaped the leader (its pid may be reused then)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def exited(self, timeout: float = 0.0) -> bool:
        """Whether the leader has exited (without reaping it), waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if self._reaped:
                return True
            try:
                info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
            except ChildProcessError:
                return True
            if info is not None:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))

    def wait(self) -> None:
        """Block until the leader has exited (not reaped). A Ctrl-C here leaves it to end() to kill."""
        if not self._reaped:
            with contextlib.suppress(ChildProcessError):
                os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOWAIT)

    def memory(self) -> RamVerdict | None:
        """What the RAM enforcer has seen so far (never blocks); None without one."""
        return self._enforcer.poll() if self._enforcer is not None else None

    def kill(self, *, timed_out: bool = False) -> None:
        """SIGKILL the whole tree now (``timed_out``: because its deadline passed, unless it was OOM-killed)."""
        with self._lock:
            if self._reaped:
                return
            if timed_out:
                if self.exited() or (self._enforcer is not None and self._enforcer.poll().killed):
                    return  # it ended (or was OOM-killed) before its deadline: not a timeout
                self._timed_out = True
            kill_job(self.proc.pid)

    def end(self, grace: float = 0.0) -> ProcessEnd:
        """Wait up to ``grace`` seconds for the leader to exit, kill the tree if it has not, reap it, clean up
        and classify. Idempotent: later calls return the same record."""
        with self._lock:
            if self._ended is not None:
                return self._ended
        if not self.exited(grace):
            self.kill()
        try:
            self.wait()
            elapsed = time.monotonic() - self._started
        finally:
            verdict = self._enforcer.stop() if self._enforcer is not None else None
            with self._lock:
                # leftovers (or all of it, when unwinding from Ctrl-C); wait until their memory is back, so the
                # next process on this machine starts from a clean slate
                kill_job(self.proc.pid, wait=CLEANUP_WAIT)
                _, status, usage = os.wait4(self.proc.pid, 0)
                self._reaped = True
                self.proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen knows it is reaped
        device = self._read_layer_stats()
        self._cleanup_private()
        rose = rise(self._oom_kills_before, kernel_oom_kills())
        evidence = Evidence(returncode=self.proc.returncode, timed_out=self._timed_out, enforcer=verdict, layer=device,
                            layer_killed=self._layer_wrote_exit_file, kernel_oom_kills=rose)  # fmt: skip
        ended = ProcessEnd.judged(evidence, usage.ru_maxrss * 1024, elapsed)
        with self._lock:
            self._ended = ended
        return ended

    def _read_layer_stats(self) -> Any:
        """The layer's last counters: from its exit file, or, for a process killed from outside (watchdog, kernel,
        timeout), from the snapshot it keeps current; ``_layer_killed`` says the exit file came from the layer's
        own OOM kill (a SIGKILL runs no exit handler, so only that kill writes it)."""
        if self._private is None:
            return None
        from mali_hil.runtime.layer_stats import read_last_stats

        last = read_last_stats(self._private / "layer-stats.json")
        if last is None:
            return None  # never opened OpenCL, or a torn file: the end still stands without device figures
        device, final = last
        self._layer_wrote_exit_file = final
        return device

    def _cleanup_private(self) -> None:
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)
