"""The one verdict: every kind of evidence, fed to the one function that turns it into a status.

Pure data in, a verdict out: no process is started here (the supervisor, Docker, device and worker tests run the
same function on real processes, containers and loaders)."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys

import pytest

from mali_hil.harness.records.results import LoadResult
from mali_hil.runtime.layer_stats import LayerStats
from mali_hil.runtime.memory import MemoryPeaks, ProcessMemory
from mali_hil.runtime.meter import JobMemory
from mali_hil.runtime.ram import Enforcement, RamVerdict
from mali_hil.runtime.supervisor import ProcessEnd, RunStatus
from mali_hil.runtime.verdict import (
    MESSAGE_LIMIT,
    Claim,
    Evidence,
    OomEvidence,
    Status,
    decide,
    layer_fields,
    meter_fields,
    ram_fields,
)

KILLED = -signal.SIGKILL
MiB = 1 << 20


def layer(failed: int = 0, overcommitted: int = 0, refused: int = 0) -> LayerStats:
    return LayerStats(generation=1, live_bytes=300 * MiB, peak_bytes=400 * MiB, live_objects=3, allocations=5,
                      frees=2, failed_allocations=failed, backend_refusals=0, overcommitted_bytes=overcommitted,
                      cap_bytes=512 * MiB, fp16_advertised=0, last_refused_bytes=refused)  # fmt: skip


def ram(killed: bool, enforcement: Enforcement = Enforcement.WATCHDOG) -> RamVerdict:
    return RamVerdict(enforcement, 1024 * MiB, 900 * MiB, 10 * MiB, 1030 * MiB, killed, samples=40, max_gap=0.004)


def test_no_evidence_of_trouble_is_ok() -> None:
    assert decide(Evidence()).status is Status.OK
    assert decide(Evidence(returncode=0)).status is Status.OK
    assert decide(Evidence(returncode=0, enforcer=ram(False), kernel_oom_kills=0)).status is Status.OK


@pytest.mark.parametrize("returncode", [1, -signal.SIGSEGV, KILLED])
def test_a_death_without_evidence_of_memory_is_an_error_never_an_oom_kill(returncode: int) -> None:
    verdict = decide(Evidence(returncode=returncode, layer=layer(), enforcer=ram(False)))
    assert (verdict.status, verdict.oom_evidence, verdict.error_type) == (Status.ERROR, None, "WorkerDied")


@pytest.mark.parametrize("returncode", [-signal.SIGSEGV, -signal.SIGABRT, -signal.SIGBUS])
def test_a_crash_where_kernels_run_in_the_process_is_the_backends_fault(returncode: int) -> None:
    crashed = Evidence(returncode=returncode, ended_in_job=True, layer=layer(), in_process_kernels=True)
    verdict = decide(crashed)
    assert (verdict.status, verdict.error_type) == (Status.ERROR, "BackendCrash")
    assert signal.Signals(-returncode).name in verdict.message and "out-of-bounds" in verdict.message
    # a real board's driver runs kernels on the GPU: the same signal there is the worker's death, not PoCL's
    assert decide(dataclasses.replace(crashed, in_process_kernels=False)).error_type == "WorkerDied"
    # memory evidence is stronger than a crash signal's guess, and a SIGKILL is no crash
    assert decide(dataclasses.replace(crashed, enforcer=ram(True))).status is Status.OOM_KILLED
    assert decide(dataclasses.replace(crashed, returncode=KILLED)).error_type == "WorkerDied"


def test_a_worker_that_exits_cleanly_in_the_middle_of_a_job_died() -> None:
    assert decide(Evidence(returncode=0, ended_in_job=True)).status is Status.ERROR


def test_the_enforcers_kill_is_an_oom_kill_with_its_peak_and_budget() -> None:
    verdict = decide(Evidence(returncode=KILLED, enforcer=ram(True)))
    assert (verdict.status, verdict.oom_evidence) == (Status.OOM_KILLED, OomEvidence.ENFORCER)
    assert "enforcer (watchdog)" in verdict.message and f"{1030 * MiB} bytes against a budget of {1024 * MiB}" in (
        verdict.message
    )


def test_memory_beats_the_deadline_but_a_deadline_beats_what_a_sigkill_left() -> None:
    assert decide(Evidence(returncode=KILLED, timed_out=True, enforcer=ram(True))).oom_evidence is OomEvidence.ENFORCER
    late = Evidence(returncode=KILLED, timed_out=True, kernel_oom_kills=1, layer=layer(1), layer_killed=True)
    assert decide(late).status is Status.TIMEOUT
    assert decide(Evidence(returncode=KILLED, timed_out=True)).status is Status.TIMEOUT


def test_the_container_engine_is_the_outermost_judge() -> None:
    verdict = decide(Evidence(returncode=KILLED, enforcer=ram(True, Enforcement.CONTAINER),
                              word=OomEvidence.CONTAINER, timed_out=True))  # fmt: skip
    assert (verdict.status, verdict.oom_evidence) == (Status.OOM_KILLED, OomEvidence.CONTAINER)
    assert "OOMKilled" in verdict.message


def test_the_layers_own_kill_needs_its_exit_file_a_refusal_and_a_sigkill() -> None:
    assert decide(Evidence(returncode=KILLED, layer=layer(failed=1), layer_killed=True)).oom_evidence is (
        OomEvidence.LAYER
    )
    assert decide(Evidence(returncode=KILLED, layer=layer(failed=0), layer_killed=True)).status is Status.ERROR
    assert decide(Evidence(returncode=KILLED, layer=layer(failed=1), layer_killed=False)).status is Status.ERROR
    assert decide(Evidence(returncode=1, layer=layer(failed=1), layer_killed=True)).status is Status.ERROR


def test_the_kernels_counter_counts_for_a_sigkill_only() -> None:
    assert decide(Evidence(returncode=KILLED, kernel_oom_kills=2)).oom_evidence is OomEvidence.KERNEL
    assert decide(Evidence(returncode=0, kernel_oom_kills=2)).status is Status.OK
    assert decide(Evidence(returncode=1, kernel_oom_kills=2)).status is Status.ERROR


@pytest.mark.parametrize("word", list(OomEvidence))
def test_a_nearer_judges_word_is_passed_on(word: OomEvidence) -> None:
    verdict = decide(Evidence(returncode=KILLED, word=word, enforcer=ram(word is OomEvidence.ENFORCER)))
    assert (verdict.status, verdict.oom_evidence) == (Status.OOM_KILLED, word)


def test_a_lost_process_and_the_harnesss_own_failures_are_infra_errors() -> None:
    lost = decide(Evidence(returncode=KILLED, lost=True, enforcer=ram(True)))
    assert (lost.status, lost.oom_evidence) == (Status.INFRA_ERROR, None)
    # the harness saw the deadline pass before the transport lost the process: that much is known
    assert decide(Evidence(returncode=-1, lost=True, timed_out=True)).status is Status.TIMEOUT
    infra = decide(Evidence(infra=Claim("WorkerError", "no worker"), claim=Claim("MemoryError", "", memory_error=True)))
    assert (infra.status, infra.error_type, infra.message) == (Status.INFRA_ERROR, "WorkerError", "no worker")


def test_the_meter_catches_a_spike_between_the_watchdogs_samples() -> None:
    spike = Evidence(meter_peak_bytes=1025 * MiB, budget_bytes=1024 * MiB, enforcement=Enforcement.WATCHDOG,
                     enforcement_gap_s=0.25, claimed=Status.OK)  # fmt: skip
    verdict = decide(spike)
    assert (verdict.status, verdict.oom_evidence) == (Status.OOM_KILLED, OomEvidence.METER)
    assert "longest gap 0.250 s" in verdict.message and verdict.message.endswith("the load itself ended ok")
    assert decide(dataclasses.replace(spike, meter_peak_bytes=1024 * MiB)).status is Status.OK
    # a kernel-enforced budget (cgroup, container) has no gap between samples: its own verdict stands
    assert decide(dataclasses.replace(spike, enforcement=Enforcement.CGROUP)).status is Status.OK
    assert decide(dataclasses.replace(spike, claimed=Status.DEVICE_OOM)).message.endswith("ended device-oom")


def test_a_memory_error_is_a_device_oom_with_what_was_needed_and_available() -> None:
    verdict = decide(Evidence(claim=Claim.of(MemoryError("cl refused")), layer=layer(failed=1, refused=200 * MiB)))
    assert (verdict.status, verdict.error_type) == (Status.DEVICE_OOM, "MemoryError")
    assert verdict.message == (f"cl refused (needed {200 * MiB} bytes, available {212 * MiB} of the {512 * MiB}-byte "
                               "device memory)")  # fmt: skip


def test_an_opencl_oom_at_enqueue_is_a_device_oom_only_with_the_layers_counters_behind_it() -> None:
    claim = Claim.of(RuntimeError("clEnqueueNDRangeKernel failed: CL_OUT_OF_RESOURCES"))
    assert decide(Evidence(claim=claim, layer=layer(overcommitted=MiB))).status is Status.DEVICE_OOM
    assert decide(Evidence(claim=claim, layer=layer())).status is Status.ERROR  # no refusal: not the cap's doing
    assert decide(Evidence(claim=claim)).status is Status.ERROR
    other = decide(Evidence(claim=Claim.of(ValueError("CL_OUT_OF_RESOURCES")), layer=layer(failed=1)))
    assert (other.status, other.error_type) == (Status.ERROR, "ValueError")


def test_a_huge_message_is_capped() -> None:
    verdict = decide(Evidence(claim=Claim.of(ValueError("x" * (MESSAGE_LIMIT * 3)))))
    assert len(verdict.message) <= MESSAGE_LIMIT + 100 and "characters cut" in verdict.message


def test_a_process_end_is_the_verdicts_process_view_and_survives_json() -> None:
    cases = {RunStatus.OK: Evidence(returncode=0), RunStatus.FAILED: Evidence(returncode=KILLED),
             RunStatus.TIMEOUT: Evidence(returncode=KILLED, timed_out=True),
             RunStatus.OOM_KILLED: Evidence(returncode=KILLED, enforcer=ram(True), layer=layer()),
             RunStatus.LOST: Evidence(returncode=-1, lost=True)}  # fmt: skip
    for status, evidence in cases.items():
        end = ProcessEnd.judged(evidence, 5 * MiB, 1.5)
        assert end.status is status
        assert ProcessEnd.from_dict(end.to_dict()) == end
        # judged again further out (the device, the engine), an end keeps its verdict
        assert decide(end.evidence_of()).status.value == {RunStatus.FAILED: "error", RunStatus.LOST: "infra-error"}.get(
            status, status.value
        )


def test_the_figures_are_result_fields() -> None:
    memory = JobMemory(ProcessMemory(anon_bytes=10, shmem_bytes=2), MemoryPeaks(anon_bytes=30, file_bytes=4,
                                                                                 unified_bytes=33), 40)  # fmt: skip
    figures = {**layer_fields(layer(overcommitted=7), layer()), **ram_fields(ram(False), peaks=True),
               **meter_fields(memory)}  # fmt: skip
    names = {field.name for field in dataclasses.fields(LoadResult)}
    assert set(figures) <= names
    result = LoadResult(Status.OK, "chunked", "emulated-mali", "x.safetensors", **figures)
    assert (result.device_overcommitted_bytes, result.device_live_before, result.ram_baseline_bytes) == (
        7,
        300 * MiB,
        12,
    )
    assert result.enforcement is Enforcement.WATCHDOG and result.peak_unified_bytes == 33
    assert layer_fields(None) == {} and ram_fields(None) == {"enforcement": Enforcement.KERNEL}


def test_the_verdict_imports_nothing_heavy() -> None:
    heavy = "('numpy', 'tinygrad', 'pyopencl', 'mali_hil.harness')"
    imports = "import sys, mali_hil.runtime.verdict, mali_hil.runtime.supervisor"
    code = f"{imports}; print([m for m in {heavy} if m in sys.modules])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
