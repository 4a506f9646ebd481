"""A device whose jobs run on a warm worker process (see harness.worker): the lifecycle shared by every kind.

A kind says how to start its worker (``worker_argv``, ``worker_env``), how its RAM is watched (``enforcer``)
and, when the worker dies mid-job, whether that was an OOM kill (``oom_evidence``). Everything else lives here:
lazy start, timeouts, classification of deaths, and restarting after one.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping, Sequence

from emulator.errors import MaliHilError
from emulator.ram import STALL_GAP, RamEnforcer, RamVerdict
from harness.devices.base import Device
from harness.devices.worker_process import WorkerGone, WorkerProcess, WorkerTimeout
from harness.jobs import LoadJob
from harness.results import LoadResult, Status


class WorkerDevice(Device):
    def __init__(self, spec: str) -> None:
        self.spec = spec
        self._worker: WorkerProcess | None = None
        self._enforcer: RamEnforcer | None = None
        self.starts = 0  # workers started so far: one, unless jobs killed some

    # --- what a kind decides -------------------------------------------------------------------------------
    def worker_argv(self) -> Sequence[str]:
        return (sys.executable, "-m", "harness.worker")

    def worker_env(self) -> Mapping[str, str]:
        # A fixed mmap threshold: glibc's adaptive one keeps large freed buffers in the heap, so one job's
        # leftovers would sit in the next job's RAM baseline and hide its growth. Real memory, not a cap.
        return {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}

    def enforcer(self) -> RamEnforcer | None:
        """What watches the worker's RAM (None: the machine's own OOM killer, as on a real board)."""
        return None

    def oom_evidence(self, returncode: int | None) -> str | None:
        """Why a worker that died with ``returncode`` was OOM-killed, or None if it was not."""
        if returncode == -signal.SIGKILL:
            return "SIGKILLed, as the kernel's OOM killer does"
        return None

    # --- the shared lifecycle ------------------------------------------------------------------------------
    @property
    def hello(self) -> dict[str, str]:
        """What the running worker said about its device (name, fp16 fidelity, backend); {} before start."""
        return dict(self._worker.hello) if self._worker is not None else {}

    def describe(self) -> dict[str, str]:
        facts = {"device": self.spec}
        facts.update({k: str(v) for k, v in self.hello.items() if k in ("device_name", "fp16", "backend")})
        return facts

    def start(self) -> None:
        if self._worker is not None and self._worker.proc.poll() is None:
            return
        self._enforcer = self.enforcer()
        preexec = self._enforcer.prepare() if self._enforcer is not None else None
        self._worker = WorkerProcess(self.worker_argv(), env=self.worker_env(), preexec=preexec)
        if self._enforcer is not None:
            self._enforcer.start(self._worker.pid)
        self.starts += 1

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None
        if self._enforcer is not None:
            self._enforcer.stop()
            self._enforcer = None

    def run(self, job: LoadJob) -> LoadResult:
        try:
            self.start()
        except MaliHilError as exc:
            self.stop()
            return self._failed(job, Status.INFRA_ERROR, type(exc).__name__, f"could not start the worker: {exc}")
        assert self._worker is not None
        try:
            reply = self._worker.request({"op": "load", "job": job.to_dict()}, "result", job.timeout_s)
        except WorkerTimeout:
            self.stop()
            return self._failed(job, Status.TIMEOUT, "Timeout", f"no result within {job.timeout_s:g} s; worker killed")
        except WorkerGone as gone:
            return self._after_death(job, gone)
        except MaliHilError as exc:
            self.stop()
            return self._failed(job, Status.INFRA_ERROR, type(exc).__name__, str(exc))
        data = {**reply["result"], "device": self.spec}
        if self._enforcer is not None:
            verdict = self._enforcer.poll()
            stalled = f" (stalled up to {verdict.max_gap:.2f} s)" if verdict.max_gap > STALL_GAP else ""
            data.update(ram_budget_bytes=verdict.limit_bytes, enforcement=verdict.enforcement + stalled)
        return LoadResult.from_dict(data)

    def _after_death(self, job: LoadJob, gone: WorkerGone) -> LoadResult:
        verdict = self._enforcer.stop() if self._enforcer is not None else None
        stderr = self._worker.stderr_tail(1500) if self._worker is not None else ""
        self._enforcer, self._worker = None, None
        evidence = "SIGKILLed by the RAM budget's enforcer" if verdict and verdict.killed else None
        evidence = evidence or self.oom_evidence(gone.returncode)
        if evidence:
            peak = f": unified memory peaked at {verdict.peak_unified_bytes} bytes" if verdict else ""
            limit = f" against a budget of {verdict.limit_bytes}" if verdict else ""
            return self._failed(job, Status.OOM_KILLED, "OOMKilled", f"{evidence}{peak}{limit}", verdict)
        message = f"worker died (exit {gone.returncode}) during the job: {stderr.strip()[-1200:]}"
        return self._failed(job, Status.ERROR, "WorkerDied", message, verdict)

    def _failed(self, job: LoadJob, status: Status, error_type: str, message: str,
                verdict: RamVerdict | None = None) -> LoadResult:  # fmt: skip
        figures = {}
        if verdict is not None:
            figures = {"peak_anon_bytes": verdict.peak_anon_bytes, "peak_file_bytes": verdict.peak_file_bytes,
                       "peak_unified_bytes": verdict.peak_unified_bytes, "ram_budget_bytes": verdict.limit_bytes,
                       "enforcement": verdict.enforcement}  # fmt: skip
        return LoadResult(status, loader=job.loader, device=self.spec, checkpoint=job.checkpoint, shard=job.shard,
                          error_type=error_type, error_message=message, lru_cache=job.lru, **figures)  # fmt: skip
