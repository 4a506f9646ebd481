"""The one verdict: how a job or a process ended, decided from evidence, and its figures as result-record fields.

Every path asks :func:`decide`: the supervisor (how a process on a board ended), the Docker channel (the engine's
word on its container), the device (a worker that died, timed out or went past its budget between the watchdog's
samples) and the worker (the exception a loader raised). Evidence is gathered where it exists and handed over as
one :class:`Evidence` record; nothing here reads a file or a process, so the verdict is a pure function that a
test can feed every kind of evidence, and that runs the same on a board and in the harness.

What counts as evidence, strongest first:
- a judge outside the job's process: our RAM enforcer (it killed the process, or saw the kernel do it in its
  cgroup), the container engine (``OOMKilled``), a timeout the supervisor enforced;
- what the process left behind: the OpenCL layer's exit file written by its own OOM kill, the kernel's OOM-kill
  counter going up while it ran; a supervisor nearer the process passes on its verdict as its word;
- the worker's own meter, for a job past the budget between two of the watchdog's samples;
- the job's claim: the exception its loader raised, judged a device OOM only with the layer's counters behind it.

A SIGKILL alone is never an OOM kill. The figures (the layer's counters, what the RAM enforcer and the meter saw)
become result fields in one place, :func:`layer_fields`, :func:`ram_fields` and :func:`meter_fields`, whichever
side builds the record. Imports nothing heavy (no numpy, tinygrad or OpenCL).
"""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mali_hil.runtime.ram import Enforcement, RamVerdict

if TYPE_CHECKING:
    from mali_hil.runtime.layer_stats import LayerStats
    from mali_hil.runtime.meter import JobMemory

# OpenCL errors that mean "out of device memory" when raised at enqueue (profiles with enqueue-error)
OOM_CODES = ("CL_OUT_OF_RESOURCES", "CL_OUT_OF_HOST_MEMORY", "CL_MEM_OBJECT_ALLOCATION_FAILURE")
MESSAGE_LIMIT = 64 << 10  # characters of an exception message kept in a result record


class Status(enum.Enum):
    """How a job ended."""

    OK = "ok"
    DEVICE_OOM = "device-oom"  # the device refused memory with an OpenCL error (cap or max alloc)
    OOM_KILLED = "oom-killed"  # the board's RAM ran out and the process was SIGKILLed, as the OOM killer would
    ERROR = "error"  # the loader raised something else (its type and message are kept)
    TIMEOUT = "timeout"  # the job passed its time limit and was killed
    INFRA_ERROR = "infra-error"  # the harness could not run the job at all


class OomEvidence(enum.StrEnum):
    """What showed that a killed process was killed for memory."""

    ENFORCER = "enforcer"  # the RAM enforcer killed it (watchdog) or saw the kernel do so (cgroup, container)
    LAYER = "layer"  # the OpenCL layer refused device memory and killed its process, as the profile's driver does
    KERNEL = "kernel"  # SIGKILL while the kernel's own OOM-kill counter went up
    CONTAINER = "container-cgroup"  # the container engine saw its memory cgroup's OOM killer act (Docker: OOMKilled)
    # the worker's own meter (every 2 ms, in-process) saw unified memory past the budget between two of the
    # watchdog's samples: the board's kernel would have killed the job there, so the harness ends it after the fact
    METER = "meter"


@dataclass(frozen=True)
class Claim:
    """What the job says of itself: the exception its loader raised, as the worker reports it."""

    error_type: str
    message: str
    memory_error: bool = False  # a MemoryError: tinygrad's word for a refused OpenCL allocation
    runtime_error: bool = False  # a RuntimeError, as an OpenCL error raised at enqueue is

    @classmethod
    def of(cls, exc: BaseException) -> Claim:
        return cls(type(exc).__name__, str(exc), isinstance(exc, MemoryError), isinstance(exc, RuntimeError))


@dataclass(frozen=True)
class Evidence:
    """Everything known about how a job or process ended; every field may be missing (its default)."""

    returncode: int | None = None  # as subprocess numbers it (negative: the signal); None: still running
    ended_in_job: bool = False  # the process ended while a job was in flight, without its result
    timed_out: bool = False  # killed because its deadline passed
    lost: bool = False  # the transport lost the process: how it ended is unknown
    enforcer: RamVerdict | None = None  # what our RAM enforcer saw
    word: OomEvidence | None = None  # an OOM kill shown by a judge nearer the process (engine, board's supervisor)
    layer: LayerStats | None = None  # the OpenCL layer's last counters
    layer_killed: bool = False  # the layer wrote its exit file, which only its own OOM kill does on a SIGKILL
    kernel_oom_kills: int = 0  # how much the kernel's OOM-kill counter went up while the process ran
    in_process_kernels: bool = False  # the OpenCL backend runs kernels inside the process (the emulator's PoCL)
    meter_peak_bytes: int | None = None  # the worker's own meter: the job's unified peak
    budget_bytes: int | None = None  # the board's RAM budget, as enforced
    enforcement: Enforcement | None = None  # how it was enforced
    enforcement_gap_s: float | None = None  # the watchdog's longest gap between two samples
    claim: Claim | None = None  # the loader's exception
    claimed: Status | None = None  # the status the worker reported for the job (judged again with the meter)
    infra: Claim | None = None  # the harness's own failure to run the job (no worker, a malformed job or result)


@dataclass(frozen=True)
class Verdict:
    status: Status
    oom_evidence: OomEvidence | None = None  # set exactly when status is OOM_KILLED
    error_type: str | None = None
    message: str = ""


def decide(evidence: Evidence) -> Verdict:
    """The status of a job or process, from what is known of how it ended. The one place a status is decided."""
    e = evidence
    if e.infra is not None:  # says nothing about the loader: the job did not run, or its end is not known
        return Verdict(Status.INFRA_ERROR, None, e.infra.error_type, e.infra.message)
    if e.lost:  # not seen to end: nothing else it carries can be trusted to be final, but a deadline that passed
        if e.timed_out:  # before the transport was lost did pass
            return _timeout()
        return Verdict(Status.INFRA_ERROR, None, "TransportLost", "the transport lost the process before it ended")
    killed = e.returncode == -signal.SIGKILL
    # an outside judge that acted is stronger than the deadline: a job killed for memory before it ran out of time
    # is an OOM kill, whoever killed it last. The container engine is the outermost judge (its cgroup holds ours).
    if e.word is OomEvidence.CONTAINER:
        return _oom(e.word, e)
    if (e.enforcer is not None and e.enforcer.killed) or e.word is OomEvidence.ENFORCER:
        return _oom(OomEvidence.ENFORCER, e)
    if e.timed_out:
        return _timeout()
    if e.word is not None:
        return _oom(e.word, e)
    # the layer raises SIGKILL on itself for an "oom-kill" profile, after counting the refused allocation and
    # writing its stats file (a SIGKILL runs no exit handlers, so the file cannot come from an exit)
    if killed and e.layer_killed and e.layer is not None and e.layer.failed_allocations > 0:
        return _oom(OomEvidence.LAYER, e)
    if killed and e.kernel_oom_kills > 0:
        return _oom(OomEvidence.KERNEL, e)
    crash = backend_crash(e.returncode) if e.in_process_kernels and e.returncode is not None else None
    if crash is not None:
        return Verdict(Status.ERROR, None, "BackendCrash", crash)
    if e.returncode is not None and (e.returncode != 0 or e.ended_in_job):
        return Verdict(Status.ERROR, None, "WorkerDied", f"exit {e.returncode}")
    if (e.enforcement is Enforcement.WATCHDOG and e.meter_peak_bytes is not None and e.budget_bytes is not None
            and e.meter_peak_bytes > e.budget_bytes):  # fmt: skip
        return _oom(OomEvidence.METER, e)
    if e.claim is not None:
        return _judge_claim(e.claim, e.layer)
    return Verdict(e.claimed or Status.OK)


# Signals a process dies of when its own memory is corrupted. On the emulator, kernels run on the CPU inside the
# process (PoCL), so a kernel that writes out of bounds corrupts the process's heap and takes it down this way; a
# Mali's kernel writes GPU memory through its own page tables, and at worst faults its GPU context.
CRASH_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE})


def backend_crash(returncode: int) -> str | None:
    """Why a process whose OpenCL kernels ran inside it and that died of ``-returncode`` is the CPU backend's
    fault, or None when it did not die of a crash signal (an exit, an OOM kill, a timeout)."""
    if returncode >= 0 or -returncode not in CRASH_SIGNALS:
        return None
    name = signal.Signals(-returncode).name
    return (f"{name}, a backend fault: on the emulator most likely a kernel's out-of-bounds write, which corrupts "
            "the process because PoCL runs kernels in it; a Mali would not take the process down this way, and the "
            "board's memory did not run out")  # fmt: skip


def _timeout() -> Verdict:
    return Verdict(Status.TIMEOUT, None, "Timeout", "killed at its deadline")


def _judge_claim(claim: Claim, layer: LayerStats | None) -> Verdict:
    """A loader's exception: a device OOM when it is tinygrad's MemoryError, or an OpenCL out-of-memory error at
    enqueue with the layer's counters showing a refusal or an overcommit; anything else is the loader's error."""
    refused = layer is not None and bool(layer.failed_allocations or layer.overcommitted_bytes)
    device_oom = claim.memory_error or (
        claim.runtime_error and refused and any(code in claim.message for code in OOM_CODES)
    )
    if not device_oom:
        return Verdict(Status.ERROR, None, claim.error_type, capped(claim.message))
    message = capped(claim.message)
    if layer is not None:
        available = max(0, layer.cap_bytes - layer.live_bytes)
        message += (f" (needed {layer.last_refused_bytes} bytes, available {available} of the {layer.cap_bytes}-byte "
                    "device memory)")  # fmt: skip
    return Verdict(Status.DEVICE_OOM, None, claim.error_type, message)


def _oom(evidence: OomEvidence, e: Evidence) -> Verdict:
    memory = e.enforcer
    if evidence is OomEvidence.METER:
        gap = e.enforcement_gap_s or 0.0
        claimed = (e.claim and _judge_claim(e.claim, e.layer).status) or e.claimed or Status.OK
        message = (f"past the RAM budget between two of the watchdog's samples (longest gap {gap:.3f} s), seen by the "
                   f"worker's own meter: unified memory peaked at {e.meter_peak_bytes} bytes against a budget of "
                   f"{e.budget_bytes}; the load itself ended {claimed.value}")  # fmt: skip
    else:
        message = describe_oom(evidence, memory)
        if memory is not None:
            message += (f": unified memory peaked at {memory.peak_unified_bytes} bytes against a budget of "
                        f"{memory.limit_bytes}")  # fmt: skip
    return Verdict(Status.OOM_KILLED, evidence, "OOMKilled", message)


def describe_oom(evidence: OomEvidence | None, memory: RamVerdict | None) -> str:
    """Why an end counts as an OOM kill, for people (empty when it does not)."""
    if evidence is OomEvidence.ENFORCER and memory is not None:
        return f"SIGKILLed by the RAM budget's enforcer ({memory.enforcement})"
    if evidence is OomEvidence.LAYER:
        return "SIGKILLed by the device's OOM behaviour (profile failure: oom-kill)"
    if evidence is OomEvidence.CONTAINER:
        return ("SIGKILLed by the kernel's OOM killer in the container's memory cgroup (the engine's OOMKilled, or the "
                "cgroup's oom_kill counter)")
    if evidence is OomEvidence.KERNEL:
        return "SIGKILLed by the kernel's OOM killer (its oom_kill counter went up meanwhile)"
    if evidence is OomEvidence.METER:
        return "past the RAM budget between two of the watchdog's samples, seen by the worker's own meter"
    return ""


def capped(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` cut to ``limit`` characters (head and tail kept): a loader's exception message travels in every
    result record, report and JUnit file, and one of 200 MiB would swamp them all."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]} [... {len(text) - 2 * half} characters cut ...] {text[-half:]}"


# --- figures as result fields: the one mapping, for every side that builds a record --------------------------
def layer_fields(after: LayerStats | None, before: LayerStats | None = None) -> dict[str, Any]:
    """The layer's counters as result fields (none where no layer counts the device); ``before``: the job's start."""
    if after is None:
        return {}
    fields: dict[str, Any] = {
        "device_peak_bytes": after.peak_bytes, "device_live_after": after.live_bytes,
        "device_cap_bytes": after.cap_bytes, "device_failed_allocations": after.failed_allocations,
        "device_overcommitted_bytes": after.overcommitted_bytes,
    }  # fmt: skip
    if before is not None:
        fields["device_live_before"] = before.live_bytes
    return fields


def ram_fields(memory: RamVerdict | None, *, peaks: bool = False) -> dict[str, Any]:
    """What the RAM enforcement saw, as result fields; ``peaks``: its sampled peaks too (a job that did not report
    its own, because its worker died). Without an enforcer of ours the machine's kernel was the enforcement."""
    if memory is None:
        return {"enforcement": Enforcement.KERNEL}
    fields: dict[str, Any] = {"ram_budget_bytes": memory.limit_bytes, "enforcement": memory.enforcement,
                              "enforcement_gap_s": memory.max_gap}  # fmt: skip
    if peaks:
        fields.update(peak_anon_bytes=memory.peak_anon_bytes, peak_file_bytes=memory.peak_file_bytes,
                      peak_unified_bytes=memory.peak_unified_bytes)  # fmt: skip
    return fields


def meter_fields(memory: JobMemory) -> dict[str, Any]:
    """The worker's own meter over one job, as result fields."""
    peaks = memory.peaks
    return {"peak_anon_bytes": peaks.anon_bytes, "peak_file_bytes": peaks.file_bytes,
            "peak_unified_bytes": peaks.unified_bytes, "ram_baseline_bytes": memory.baseline.unified,
            "ram_worker_bytes": memory.worker.unified}  # fmt: skip
