"""The assertions of the memory properties (memory-bound, oom) and of the properties whose tests keep theirs inline
(idempotence, shards), as functions: a property test and test_wrong_loaders.py call the same one, the latter to
see it fail on a deliberately wrong loader. Values are judged by conftest's ``check_oracle`` everywhere.

Memory figures come from two places with different precision (see mali_hil.harness.worker):
- device bytes are the OpenCL layer's counters: exact, every byte of every live memory object; no slack;
- RAM growth is the worker's own RSS sampled every 2 ms: sampling can only miss a peak, never invent one, but
  the figure also holds what is not the loader's: the interpreter's and tinygrad's bookkeeping of a job (UOp
  graphs, plans, dicts), page rounding of each buffer and allocator headers. Measured on warm jobs of all five
  variants (models of 0.2-63 MB, chunks of 1-64 MiB) the growth was at most 0.4 MiB over the declared bound,
  1.5 MiB on a first (cold) job. ``RAM_SLACK_FLOOR`` covers the fixed part with 8x room on that, and
  ``RAM_SLACK_SHARE`` what grows with the model; one forgotten 64 MiB chunk, a second copy of a 4 MiB tensor or
  a whole-file read of anything over ~4 MiB still fails.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mali_hil.harness.checkpoints import ModelConfig, node_keys
from mali_hil.harness.loaders.base import JudgedBounds
from mali_hil.harness.records.results import LoadResult, Status

from .conftest import check_oracle, failed

MIB = 1 << 20
RAM_SLACK_FLOOR = 4 * MIB
RAM_SLACK_SHARE = 0.02
OOM_STATUSES = (Status.DEVICE_OOM, Status.OOM_KILLED)
_OOM_FIGURES = re.compile(r"needed (\d+) bytes, available (\d+)")


def ram_slack(ram_bound: int) -> int:
    """What RAM growth may exceed a declared RAM bound by: measurement noise, not the loader's (module docstring)."""
    return max(RAM_SLACK_FLOOR, int(ram_bound * RAM_SLACK_SHARE))


# --- memory-bound ------------------------------------------------------------------------------------------------


def check_within_cap(result: LoadResult) -> None:
    """Whatever a job ended with, it never held more device memory than the cap without reporting ``device-oom``:
    an ``ok`` job's tensors are all counted by the layer (``bytes_loaded <= live after <= peak <= cap``). On an
    enqueue-error profile a buffer past the cap is created, uncounted, and fails only when used: a loader that
    returned such buffers unused would show as tensor bytes the layer does not count."""
    assert result.status in (Status.OK, *OOM_STATUSES), (
        f"a valid checkpoint must load or run out of memory: {failed(result)}"
    )
    if result.device_peak_bytes is None or result.device_cap_bytes is None:
        return  # no layer in front of this device (--device=local): nothing counts its memory
    peak, cap = result.device_peak_bytes, result.device_cap_bytes
    assert peak <= cap, f"{result.loader}: device peak {peak} bytes passed the {cap}-byte cap ({result.status.value})"
    if result.ok and result.device_live_after is not None:
        live = result.device_live_after
        assert result.bytes_loaded <= live <= peak, (
            f"{result.loader}: {result.bytes_loaded} bytes of tensors loaded, but the layer counts {live} live bytes"
            f" (peak {peak}): tensor memory the cap does not see (overcommitted past it, or views of one buffer)"
        )


def run_twice(run: Any, spec: str, checkpoint: str | Path, loader: str, digests: bool = False,
              **job: Any) -> tuple[LoadResult, LoadResult]:  # fmt: skip
    """memory-bound's protocol on a measured board (conftest ``BoardRunner``): the same job twice, the second is
    judged. The first compiles the variant's kernels for these shapes into the disk caches (each job runs in a fresh
    process, so the judged one builds nothing from source); it never reads digests. The judged job reads them
    with ``digests``, after its memory figures are taken. Each is checked within the cap, and the board settled
    after a failed one."""
    warm = run(spec, checkpoint, loader, digests=False, **job)
    check_within_cap(warm)
    if not warm.ok:
        run.settle(spec)
    result = run(spec, checkpoint, loader, digests=digests, **job)
    check_within_cap(result)
    if not result.ok:
        run.settle(spec)
    return warm, result


def check_judged(warm: LoadResult, result: LoadResult, bounds: JudgedBounds) -> None:
    """memory-bound's verdict on ``run_twice``: a device-oom only where the device bound passes the cap, and an
    ``ok`` job within its bounds. RAM only after an ok warm job: after a failed one the judged job ran cold (a new
    worker, the compiler's one-off memory in it); device bytes are exact and start from a settled device either
    way."""
    cap = result.device_cap_bytes
    if result.status is Status.DEVICE_OOM and cap is not None:
        assert bounds.device > cap, (
            f"{result.loader}: device-oom on a {cap}-byte cap although {bounds.source('device')} is {bounds.device}:"
            f" it uses more device memory than that ({result.error_message})"
        )
    if result.ok:
        check_memory_bound(result, bounds, ram=warm.ok)


def check_memory_bound(result: LoadResult, bounds: JudgedBounds, ram: bool = True) -> None:
    """An ``ok`` job's device peak is within its device bound (exactly) and, with ``ram``, its RAM growth within
    its RAM bound plus ``ram_slack``: bounds the loader declares, ``default_bound`` where it declares none. A figure
    the device cannot measure is not checked."""
    assert result.ok, failed(result)
    peak, growth = result.device_peak_bytes, result.ram_growth_bytes
    if peak is not None:
        assert peak <= bounds.device, (
            f"{result.loader}: device peak {peak} bytes is {peak - bounds.device} over {bounds.source('device')}"
            f" {bounds.device} ({result.checkpoint})"
        )
    if ram and growth is not None:
        slack = ram_slack(bounds.ram)
        assert growth <= bounds.ram + slack, (
            f"{result.loader}: RAM grew {growth} bytes, {growth - bounds.ram} over {bounds.source('RAM')} {bounds.ram}"
            f" (slack {slack}; baseline {result.ram_baseline_bytes}, {result.checkpoint})"
        )


# --- oom ---------------------------------------------------------------------------------------------------------


def oom_figures(message: str | None) -> tuple[int, int] | None:
    """``(needed, available)`` bytes from a device-oom message, or None if it does not state them."""
    match = _OOM_FIGURES.search(message or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def check_oom(result: LoadResult) -> None:
    """A job that cannot fit ends ``device-oom`` or ``oom-killed`` (never ``error``, ``timeout`` or ``ok``); a
    device-oom says how many bytes it needed and how many were available, and those make sense (needed > 0,
    available <= cap, needed > available)."""
    assert result.status in OOM_STATUSES, f"a checkpoint that cannot fit must run out of memory: {failed(result)}"
    assert result.error_message, f"{result.loader}: {result.status.value} without a message saying why"
    if result.status is not Status.DEVICE_OOM:
        return
    figures = oom_figures(result.error_message)
    assert figures is not None, f"{result.loader}: device-oom without needed/available bytes: {result.error_message}"
    needed, available = figures
    cap = result.device_cap_bytes
    assert needed > 0, f"{result.loader}: device-oom that needed {needed} bytes: {result.error_message}"
    if cap is not None:
        assert available <= cap, f"{result.loader}: {available} bytes available of a {cap}-byte cap"
    assert needed > available, (
        f"{result.loader}: device-oom although {available} bytes were available for {needed}: {result.error_message}"
    )


def check_recovered(after: LoadResult, reference: LoadResult, checkpoint: str | Path) -> None:
    """The job after an out-of-memory job loads ``checkpoint`` correctly and ends with the live device bytes the
    same job had before (``reference``): nothing of the failed job is still held."""
    assert after.ok, f"the job after an out-of-memory one failed: {failed(after)}"
    check_oracle(after, checkpoint)
    if reference.device_live_after is not None:
        assert after.device_live_after == reference.device_live_after, (
            f"{after.loader}: {after.device_live_after} live device bytes after the job that followed the failed"
            f" one, {reference.device_live_after} after the same job before it: the failed job's buffers are held"
        )


# --- idempotence and shards (the assertions of test_idempotence.py and test_shards.py, as functions) --------------


def check_same_job_twice(first: LoadResult, second: LoadResult, idle_after: int | None) -> bool:
    """The same job twice on one worker: same values, same device memory, and the device back at the live bytes
    the first job found, between the jobs and after them (``idle_after``: a probe job's reading). Returns False
    when no layer counts the device's memory (``--device=local``): then only the values were checked."""
    assert first.ok, failed(first)
    assert second.ok, failed(second)
    assert second.digests == first.digests, f"{first.loader} loaded other values the second time"
    for result in (first, second):  # each job runs in a fresh process: what it holds is measured in the job itself
        held = result.leaked.get("device_bytes")
        if held:
            raise AssertionError(
                f"{first.loader}: {held} device bytes were still live once the job's tensors and tinygrad's caches "
                "were dropped, so they are held elsewhere (a module-level list or cache)"
            )
    idle = first.device_live_before
    if idle is None:
        return False
    for when, live in (("between the jobs", second.device_live_before), ("after them", idle_after)):
        if live != idle:
            left = (live or 0) - idle
            sized = sorted(name for name, digest in second.digests.items() if digest.nbytes == left)
            raise AssertionError(
                f"{first.loader}: {idle} live device bytes before the first job, {live} {when}; the worker frees"
                f" every tensor and tinygrad's caches after a job, so {left} bytes are held elsewhere"
                + (f" (the size of {', '.join(sized)})" if sized else "")
            )
    assert second.device_live_after == first.device_live_after, (
        f"{first.loader}: the second job ended with {second.device_live_after} live device bytes, the first with"
        f" {first.device_live_after}"
    )
    assert second.device_peak_bytes == first.device_peak_bytes, (
        f"{first.loader}: device peak {first.device_peak_bytes} then {second.device_peak_bytes} bytes"
    )
    return True


def check_node(result: LoadResult, checkpoint: str | Path, config: ModelConfig, start: int, end: int) -> None:
    """An exo node holding layers ``start..end`` loaded exactly ``node_keys`` with the oracle's values."""
    assert result.ok, failed(result)
    keys = node_keys(config, start, end)
    assert sorted(result.digests) == sorted(keys), (
        f"node {start}-{end} of {config.name}: loaded {sorted(set(result.digests) - set(keys))} it should not,"
        f" missed {sorted(set(keys) - set(result.digests))}"
    )
    check_oracle(result, checkpoint, keys)
