"""A job's result record, assembled in the worker outside the job's process, from evidence and the job's claims.

Evidence: how the job's child ended (its wait status), the memory of the child and of everything it started, and
the OpenCL layer's counters, all taken by the parent (:mod:`mali_hil.runtime.meter`). Claims: what the child sent
(``ready``, ``loaded``, then the loader's exception, or the tensors' names, shapes and digests, and what the job
left open). The status is :func:`mali_hil.runtime.verdict.decide`'s, from both; a claim can add to a record but
not lower its memory figures, and what does not follow from the evidence makes the job an ``error``:
- the harness's own code in the child was replaced (the identity check), or the layer's counters were reset (no
  harness code resets them: each job's layer is fresh): "the loader altered the harness";
- a claim sent twice (something in the job wrote on the harness's pipe);
- an OOM kill by the layer that the layer could not have done: the profile's driver does not fail that way, or the
  refused request does not pass the cap from what was live, or what was live is more than the job's RAM held
  (device buffers are the board's RAM, committed at allocation).
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import replace
from typing import Any

from mali_hil.harness.records.jobs import LoadJob
from mali_hil.harness.records.results import LoadResult
from mali_hil.runtime.layer_stats import LayerStats, read_stats_file
from mali_hil.runtime.meter import JobMeter
from mali_hil.runtime.verdict import Claim, Evidence, OomEvidence, Status, Verdict, decide, layer_fields, meter_fields

ALTERED = "the loader altered the harness"
OUTPUT = "output"  # among the messages: the last of what the job printed, kept by the worker (never a claim)
LAYER_SLACK = 16 << 20  # device bytes a layer may count beyond what the job's RAM showed (pages not yet touched)


def infra(job: LoadJob | None, facts: dict[str, str], error_type: str, message: str) -> LoadResult:
    verdict = decide(Evidence(infra=Claim(error_type, message)))
    return LoadResult(verdict.status, job.loader if job else "", facts["device_name"], job.checkpoint if job else "",
                      error_type=verdict.error_type, error_message=verdict.message)  # fmt: skip


def assemble(job: LoadJob, facts: dict[str, str], status: int, messages: dict[str, Any], meter: JobMeter,
             board: Any) -> LoadResult:  # fmt: skip
    """The record of ``job``, whose child ended with wait ``status`` after sending ``messages``."""
    returncode = os.waitstatus_to_exitcode(status)
    claim = messages.get("claim")
    claim = claim if isinstance(claim, dict) else None
    if claim is not None and isinstance(claim.get("infra"), str):
        return infra(job, facts, "WorkerError", claim["infra"])
    memory = meter.stop()
    layer = meter.layer.stats(meter.loaded_layer)
    figures: dict[str, Any] = {**layer_fields(layer, meter.layer.first)}
    if memory is not None:
        figures.update(meter_fields(memory))
    marks = meter.marks
    if "ready" in marks:
        figures["elapsed_s"] = marks.get("loaded", marks["ready"]) - marks["ready"]
    base: dict[str, Any] = {"loader": job.loader, "device": facts["device_name"], "checkpoint": job.checkpoint,
                            "shard": job.shard, "lru_cache": job.lru, "fp16": facts["fp16"],
                            "backend": facts["backend"], **figures}  # fmt: skip
    verdict = _judge(returncode, claim, messages, meter, board, memory.hwm_bytes - memory.baseline.unified
                     if memory is not None else 0)  # fmt: skip
    if verdict.status is not Status.OK or claim is None:
        if verdict.status is Status.ERROR and claim is not None and claim.get("trace"):
            print(claim["trace"], file=sys.stderr)
        return LoadResult(verdict.status, error_type=verdict.error_type, error_message=verdict.message,
                          oom_evidence=verdict.oom_evidence, leaked=_leaked(claim, meter), **base)  # fmt: skip
    data = {"status": Status.OK.value, "bytes_loaded": claim.get("bytes_loaded", 0),
            "tensors": claim.get("tensors", 0), "digests": claim.get("digests") or {},
            "values": claim.get("values") or {}, "leaked": _leaked(claim, meter)}  # fmt: skip
    result = LoadResult.from_dict({**data, **base})
    return replace(result, status=verdict.status)


def _leaked(claim: dict[str, Any] | None, meter: JobMeter) -> dict[str, int]:
    """What the job claims it left open, and the device bytes still live once its tensors and tinygrad's caches
    were dropped (measured here: a loader that keeps tensors in a module-level list or cache holds them)."""
    leaked = (claim or {}).get("leaked") or {}
    counts = {str(kind): int(count) for kind, count in leaked.items()} if isinstance(leaked, dict) else {}
    start, cleaned = meter.layer.first, meter.cleaned_layer
    if start is not None and cleaned is not None and cleaned.live_bytes > start.live_bytes:
        counts["device_bytes"] = cleaned.live_bytes - start.live_bytes
    return counts


def _judge(returncode: int, claim: dict[str, Any] | None, messages: dict[str, Any], meter: JobMeter, board: Any,
           ram_growth: int) -> Verdict:  # fmt: skip
    layer = meter.layer.stats()
    altered = list(claim.get("altered") or []) if claim is not None else []
    if layer is not None and layer.generation > 0:
        altered.append("the layer's counters were reset")
    if altered:
        return Verdict(Status.ERROR, None, "HarnessAltered", f"{ALTERED}: {', '.join(map(str, altered[:5]))}")
    if "conflict" in messages:
        return Verdict(Status.ERROR, None, "HarnessAltered",
                       f"{ALTERED}: a second message on the harness's pipe ({messages['conflict']!r})")  # fmt: skip
    emulated = board is not None
    if returncode != 0 or claim is None:  # the job's process died (or exited) before its claim
        killed = returncode == -signal.SIGKILL
        exit_file = _layer_exit_file(meter) if killed else None
        credible = exit_file is not None and _layer_could_kill(exit_file, board, ram_growth)
        kills = meter.oom_kills
        verdict = decide(Evidence(returncode=returncode, ended_in_job=True, layer=exit_file or layer,
                                  layer_killed=credible, in_process_kernels=emulated,
                                  word=OomEvidence.CONTAINER if killed and kills.container else None,
                                  kernel_oom_kills=kills.kernel or 0))  # fmt: skip
        said = _last_words(messages)
        if verdict.error_type == "BackendCrash":  # the device's wording for a dead worker, the same words here
            return replace(verdict, message=f"the job's process died (exit {returncode}, {verdict.message}){said}")
        if verdict.error_type == "WorkerDied":
            return replace(verdict, message=f"the job's process ended ({verdict.message}) before its result{said}")
        return verdict
    exception = claim.get("exception")
    if isinstance(exception, dict):
        told = Claim(str(exception.get("error_type")), str(exception.get("message")),
                     bool(exception.get("memory_error")), bool(exception.get("runtime_error")))  # fmt: skip
        # the counters as the loader left them (before the cleanup freed its tensors): what was live when it failed
        at_failure = meter.layer.stats(meter.loaded_layer)
        return decide(Evidence(claim=told, layer=None if claim.get("refused") else at_failure))
    return decide(Evidence())


def _last_words(messages: dict[str, Any]) -> str:
    """The end of what a job whose process died printed, for its message (the job's own words, quoted as such)."""
    output = str(messages.get(OUTPUT) or "").strip()
    return f"; the last it printed: {output[-1200:]}" if output else ""


def _layer_exit_file(meter: JobMeter) -> LayerStats | None:
    """The counters the layer writes just before its own OOM kill (a SIGKILL runs no exit handler)."""
    if meter.layer.stats_file is None:
        return None
    try:
        return read_stats_file(meter.layer.stats_file)
    except Exception:
        return None


def _layer_could_kill(stats: LayerStats, board: Any, ram_growth: int) -> bool:
    """Whether the layer itself could have written ``stats`` and killed the job: only a profile whose driver fails
    with an OOM kill at its own counter does, only for a request past the cap from what was live, and what was
    live is device memory the job's RAM held."""
    from mali_hil.emulator.profile import OomFailure, OomTrigger

    profile = getattr(board, "profile", None)
    if profile is None or (profile.oom_failure, profile.oom_trigger) != (OomFailure.OOM_KILL, OomTrigger.BOTH):
        return False
    refused_past_cap = stats.live_bytes + stats.last_refused_bytes > stats.cap_bytes
    held = stats.live_bytes <= max(0, ram_growth) + LAYER_SLACK
    return stats.failed_allocations > 0 and stats.generation == 0 and refused_past_cap and held
