"""A device: a board reached through a transport, running load jobs on a warm worker. One class for every kind.

A kind (emulated-mali, local, later ssh and docker) only decides the :class:`Board` (data) and the
:class:`~mali_hil.harness.transports.base.Transport` (behaviour); the lifecycle lives here: a lazy start, one job
at a time with a timeout, every way a job can end turned into a result record, and a new worker after a death.
How a dead worker ended (an OOM kill or not) is the supervisor's verdict on the worker's side, never a guess here;
every status comes from :func:`mali_hil.runtime.verdict.decide`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from mali_hil.emulator.backend import Fp16Fidelity
from mali_hil.errors import MaliHilError, WorkerError
from mali_hil.harness.devices.board import Board, DeviceFacts
from mali_hil.harness.records.jobs import LoadJob
from mali_hil.harness.records.results import LoadResult
from mali_hil.harness.transports.base import Channel, Transport
from mali_hil.harness.worker.protocol import EMULATE_ENV, WORKER_MODULE, WorkerClient, WorkerGone, WorkerTimeout
from mali_hil.runtime.ram import Enforcement
from mali_hil.runtime.supervisor import ISOLATED, ProcessEnd, RunStatus
from mali_hil.runtime.verdict import Claim, Evidence, OomEvidence, Status, Verdict, decide, layer_fields, ram_fields

# glibc's adaptive mmap threshold keeps large freed buffers in the heap, so one job's leftovers would sit in the
# next job's RAM baseline and hide its growth. A fixed threshold is real memory behaviour, not a cap.
WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
START_TIMEOUT = 120.0  # seconds for a worker to import tinygrad and open its device
DEATH_GRACE = 5.0  # seconds a worker whose output ended gets to finish exiting before it is killed
STOP_GRACE = 10.0  # seconds a worker asked to exit gets before it is killed


class Device:
    """Runs load jobs on ``board`` through ``transport``; ``env`` is added to the worker's environment.

    ``retries``: how often a job is run again when the transport lost its worker (a dropped connection, never a
    worker that was seen to fail); then it is an ``infra-error``. Jobs that ended are never run again.
    """

    def __init__(self, board: Board, transport: Transport, env: Mapping[str, str] | None = None,
                 retries: int = 0) -> None:  # fmt: skip
        self.board = board
        self.transport = transport
        self.retries = retries
        self.env = dict(env or {})  # added to every worker's environment
        self._channel: Channel | None = None
        self._client: WorkerClient | None = None
        self._hello: dict[str, Any] = {}
        self._busy = False  # a job is in flight: stopping must kill, not wait for the worker to finish it
        self._spare: Channel | None = None  # a worker started ahead, not yet greeted (see _keep_spare)
        self.starts = 0  # workers put to work so far: one, unless jobs killed some (a spare counts when used)
        self.lost = 0  # workers the transport lost (dropped connections), each retried or reported
        self.jobs = 0  # jobs run so far: who shares the device tells by it whether another ran a job meanwhile

    @property
    def spec(self) -> str:
        return self.board.spec.text

    @property
    def facts(self) -> DeviceFacts:
        board, hello = self.board, self._hello
        return DeviceFacts(
            spec=self.spec, kind=board.spec.kind, physical=board.physical, emulated=board.emulate is not None,
            profile=board.profile, cap_bytes=board.cap_bytes, ram_budget_bytes=board.ram_budget,
            enforcement=self.transport.enforcement(board.ram_budget), one_worker=board.one_worker,
            device_name=hello.get("device_name"),
            backend=hello.get("backend") or None, fp16=Fp16Fidelity(hello.get("fp16", Fp16Fidelity.UNKNOWN)),
        )  # fmt: skip

    def worker_env(self) -> dict[str, str]:
        env = {**WORKER_ENV, **self.env}
        if self.board.emulate_spec is not None:
            env[EMULATE_ENV] = self.board.emulate_spec
        return env

    # --- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start a worker unless one is running; raises a MaliHilError (with the worker's own words) if it cannot."""
        if self._client is not None:
            return
        channel, self._spare = self._spare, None
        if channel is None:
            channel = self._spawn()
        self.starts += 1
        try:
            client = WorkerClient(channel, START_TIMEOUT)
        except WorkerError as exc:
            end = channel.end(DEATH_GRACE)
            stderr = channel.stderr_tail(1500).strip()
            raise WorkerError(f"cannot start the worker on {self.spec} ({exc}; it ended {_ended(end)})"
                              + (f": {stderr}" if stderr else "")) from None  # fmt: skip
        self._channel, self._client, self._hello = channel, client, dict(client.hello)
        self._keep_spare()

    def _spawn(self) -> Channel:
        argv = (*self.transport.python(), *ISOLATED, "-m", WORKER_MODULE)
        return self.transport.spawn(argv, self.worker_env(), ram_budget=self.board.ram_budget)

    def _keep_spare(self) -> None:
        """Once a device has needed a second worker (its first was OOM-killed, timed out or restarted), it is
        likely to need more: start the next one now, so it imports tinygrad and opens its device while this one
        works, instead of when this one dies (0.4-0.5 s each, dozens of times in the property suite). Only where
        the transport allows it and the worker has a RAM budget of its own; never for a single-job device."""
        if self._spare is not None or self.starts < 2 or not self.transport.spare_workers:
            return
        if self.transport.enforcement(self.board.ram_budget) is Enforcement.KERNEL:
            return  # no budget of ours: the spare would share the job's RAM
        try:
            self._spare = self._spawn()
        except MaliHilError:
            self._spare = None  # the next start spawns its own worker and reports why it cannot

    def _drop_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.kill()  # it never ran a job: nothing to wait for
            spare.end()

    def stop(self) -> None:
        """Ask the worker to exit (killed if it does not within STOP_GRACE); the next job starts a new one."""
        channel, client = self._channel, self._client
        self._channel, self._client = None, None
        if channel is not None and self._busy:
            channel.kill()  # interrupted mid-job (Ctrl-C): the job's result is not coming, do not wait for it
        elif client is not None:
            client.exit()
        if channel is not None:
            channel.end(0.0 if self._busy else STOP_GRACE)
        self._busy = False

    def close(self) -> None:
        self.stop()
        self._drop_spare()
        self.transport.close()

    def interrupt(self) -> None:
        """From another thread, while ``run`` is in flight (a cluster's Ctrl-C): kill the worker's process tree now.
        ``run`` then returns that death as its result, which says nothing about the loader: whoever interrupted
        must not record it. Stopping and reaping stay with the thread that runs the job."""
        channel = self._channel
        if channel is not None:
            channel.kill()

    def __enter__(self) -> Device:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- jobs ----------------------------------------------------------------------------------------------
    def run(self, job: LoadJob) -> LoadResult:
        """Run one job; always returns a result record (dead workers and timeouts included), never raises."""
        self.jobs += 1
        for attempt in range(self.retries + 1):
            result = self._run_once(job)
            if result is not None:
                return result
            self.lost += 1
            last = attempt == self.retries
            if last:
                return self._infra(job, "TransportLost", f"{self.spec} lost the worker (the connection dropped) "
                                   f"{attempt + 1} time(s) during this job; it was run {attempt + 1} time(s), never "
                                   "completed")  # fmt: skip
        raise AssertionError("unreachable")

    def _run_once(self, job: LoadJob) -> LoadResult | None:
        """One attempt; None when the transport lost the worker (the caller may run the job again)."""
        try:
            self.start()
            placed = replace(job, checkpoint=self.transport.place(Path(job.checkpoint)))
        except MaliHilError as exc:
            self.stop()
            return self._infra(job, type(exc).__name__, f"could not start the worker: {exc}")
        assert self._client is not None and self._channel is not None
        channel = self._channel
        self._busy = True
        try:
            data = self._client.load(placed.to_dict(), job.timeout_s)
        except WorkerTimeout:
            self._channel, self._client, self._busy = None, None, False
            channel.kill()
            end = channel.end()
            verdict = decide(end.evidence_of(timed_out=True))
            message = (
                f"no result within {job.timeout_s:g} s; worker killed" if verdict.status is Status.TIMEOUT else None
            )
            return self._failed(job, verdict, end, message)
        except WorkerGone:
            self._channel, self._client, self._busy = None, None, False
            end = channel.end(DEATH_GRACE)
            if end.status is RunStatus.LOST:
                return None
            return self._after_death(job, end, channel.stderr_tail(1500))
        except WorkerError as exc:
            self.stop()
            return self._infra(job, type(exc).__name__, str(exc))
        self._busy = False
        data["device"] = self.spec
        data.update(ram_fields(channel.memory()))
        try:
            result = LoadResult.from_dict(data)
        except (TypeError, ValueError, KeyError) as exc:
            return self._infra(job, "WorkerError", f"the worker's result is malformed: {exc}")
        # the leak stays with this job: the next one starts in a fresh worker (worker.leaks); and after the kernel's
        # OOM killer acted in the worker's cgroup (a container's), the next job gets a fresh one too, as a board
        # rebooted after an OOM kill would, rather than a cgroup that has just been reclaiming under pressure
        if result.leaked or result.oom_evidence is OomEvidence.CONTAINER:
            self.stop()
        return self._missed_by_watchdog(result) or result

    def _missed_by_watchdog(self, result: LoadResult) -> LoadResult | None:
        """The job as the board's kernel would have ended it, when the worker's meter saw it past the RAM budget
        that the watchdog's sampling missed (a spike between two samples, or a watchdog not scheduled in time,
        as on two busy cores). Without this, the verdict would depend on the watchdog's timing. The worker is
        ended too, as the kernel would have: the next job starts from a fresh one, as after any OOM kill."""
        verdict = decide(Evidence(meter_peak_bytes=result.peak_unified_bytes, budget_bytes=result.ram_budget_bytes,
                                  enforcement=result.enforcement, enforcement_gap_s=result.enforcement_gap_s,
                                  claimed=result.status))  # fmt: skip
        if verdict.oom_evidence is not OomEvidence.METER:
            return None
        channel = self._channel
        self._channel, self._client = None, None
        if channel is not None:
            channel.kill()
            channel.end(DEATH_GRACE)
        return replace(result, status=verdict.status, error_type=verdict.error_type, error_message=verdict.message,
                       oom_evidence=verdict.oom_evidence, bytes_loaded=0, tensors=0, digests={}, values={})  # fmt: skip

    def _after_death(self, job: LoadJob, end: ProcessEnd, stderr: str) -> LoadResult:
        verdict = decide(end.evidence_of(ended_in_job=True, in_process_kernels=self.facts.emulated))
        why = f", {verdict.message}" if verdict.error_type == "BackendCrash" else ""
        died = f"worker died ({_ended(end)}{why}) during the job: {stderr.strip()[-1200:]}"
        return self._failed(job, verdict, end, died if verdict.status is Status.ERROR else None)

    def _infra(self, job: LoadJob, error_type: str, message: str) -> LoadResult:
        """The harness could not run the job (no worker, a lost connection, a malformed result)."""
        return self._failed(job, decide(Evidence(infra=Claim(error_type, message))))

    def _failed(self, job: LoadJob, verdict: Verdict, end: ProcessEnd | None = None,
                message: str | None = None) -> LoadResult:  # fmt: skip
        """The record of a job that ended without the worker's result: the verdict, the figures its process left
        (the RAM enforcer's peaks, the layer's last counters, however it ended), ``message`` for the verdict's."""
        figures: dict[str, Any] = {"enforcement": self.transport.enforcement(self.board.ram_budget),
                                   "ram_budget_bytes": self.board.ram_budget}  # fmt: skip
        if end is not None:
            if end.memory is not None:
                figures.update(ram_fields(end.memory, peaks=True))
            figures.update(layer_fields(end.device))
        return LoadResult(verdict.status, loader=job.loader, device=self.spec, checkpoint=job.checkpoint,
                          shard=job.shard, error_type=verdict.error_type, error_message=message or verdict.message,
                          oom_evidence=verdict.oom_evidence, lru_cache=job.lru, fp16=self.facts.fp16,
                          backend=self.facts.backend or "", **figures)  # fmt: skip


def _ended(end: ProcessEnd) -> str:
    """``exit N`` as subprocess numbers it (negative: the signal that killed it), and why it was an OOM kill."""
    how = f"exit {end.returncode}"
    return how if end.status is not RunStatus.OOM_KILLED else f"{how}, {end.describe_oom()}"
