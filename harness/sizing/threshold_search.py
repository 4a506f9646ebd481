"""The smallest board a load fits on: bisect the emulated board's RAM, per loader variant, to a fixed step.

Each probe is a real load on a fresh emulated board of that RAM (global memory keeps the profile's share of it),
judged by the status alone: ``ok`` fits, ``device-oom`` and ``oom-killed`` do not. Any other ending (an error, a
timeout, a harness failure) stops that variant's search with the reason, never taken as either answer.
The search starts at the prediction (or the board given) and gallops from there (``search``); it never goes
below what no load can fit in (the worker's idle RAM plus the tensors as they end on the device) nor above this
machine's RAM.

The prediction is ``mali-hil fit``'s, from the variant's declared bounds, solved for RAM on the same grid.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mali_hil.emulator.profile import load_profile
from mali_hil.errors import MaliHilError
from mali_hil.harness.devices import make_device
from mali_hil.harness.records.jobs import LoadJob
from mali_hil.harness.records.results import LoadResult, Status
from mali_hil.harness.sizing.predict import predict_fit

STEP = 16 << 20
DOCUMENT_KIND = "mali-hil.threshold"


@dataclass
class Probe:
    ram: int
    status: str
    device_peak_bytes: int | None
    peak_unified_bytes: int | None
    elapsed_s: float


@dataclass
class Threshold:
    loader: str
    final_bytes: int
    predicted_ram: int | None  # None: the loader declares no bounds
    measured_ram: int | None = None  # None: no success up to the ceiling, or the search stopped
    ceiling: int = 0
    stopped: str | None = None  # why the search ended without an answer
    probes: list[Probe] = field(default_factory=list)

    @property
    def ratio_to_final(self) -> float | None:
        return None if self.measured_ram is None or not self.final_bytes else self.measured_ram / self.final_bytes

    @property
    def measured_over_predicted(self) -> float | None:
        if self.measured_ram is None or not self.predicted_ram:
            return None
        return self.measured_ram / self.predicted_ram

    def to_dict(self) -> dict[str, Any]:
        return {
            "loader": self.loader,
            "final_bytes": self.final_bytes,
            "predicted_ram": self.predicted_ram,
            "measured_ram": self.measured_ram,
            "ceiling": self.ceiling,
            "stopped": self.stopped,
            "ratio_to_final": self.ratio_to_final,
            "measured_over_predicted": self.measured_over_predicted,
            "probes": [vars(p) for p in self.probes],
        }


class ResizableBoard:
    """An emulated-mali device spec, resized: ``at(ram)`` is the same profile on a board with ``ram`` bytes."""

    def __init__(self, spec: str) -> None:
        device = make_device(spec)
        if device.board.emulate is None:
            raise MaliHilError(f"threshold resizes an emulated board's RAM; {spec} is not an emulated-mali device")
        self.profile = device.board.emulate.profile
        self.kind = device.board.spec.kind
        self.ram = self.profile.board_ram
        self._base = load_profile(self.profile.key)  # resized from the profile's own file, as at(ram) is

    def at(self, ram: int) -> str:
        return f"{self.kind}:{self.profile.key}:{ram}"

    def limits(self, ram: int) -> tuple[int, int]:
        """(device memory cap, RAM budget) of the board resized to ``ram``: the profile's rule, as the device made
        for ``at(ram)`` has them (its budget is what that board leaves a job), without making one per probe."""
        resized = self._base.with_ram(ram)
        return resized.global_mem, resized.job_budget()


def predicted_ram(
    bounds: tuple[int | None, int | None], board: ResizableBoard, baseline: int, ceiling: int
) -> int | None:
    """The smallest RAM on the STEP grid at which fit's prediction says the load fits (bounds grow with nothing)."""
    if None in bounds:
        return None

    def fits(ram: int) -> bool:
        cap, budget = board.limits(ram)
        prediction = predict_fit(bounds, cap=cap, budget=budget, baseline=baseline)
        return prediction is not None and prediction.fits

    if not fits(ceiling):
        return None
    return _bisect(0, ceiling, fits)


def search(
    board: ResizableBoard,
    make_job: Callable[[], LoadJob],
    *,
    floor: int,
    ceiling: int,
    guess: int | None = None,
    on_probe: Callable[[Probe, LoadResult], None] | None = None,
) -> tuple[int | None, list[Probe], str | None]:
    """The smallest RAM on the STEP grid at which ``make_job()`` succeeds: (RAM or None, probes, why it stopped).

    Starts at ``guess`` (the prediction, else the board given) and gallops (steps doubling) down while the load
    fits and up while it does not, then bisects the last gap: a close guess costs two probes, not log2(RAM/STEP).
    ``floor`` is a RAM no load can fit in, so it is never probed."""
    probes: list[Probe] = []

    def run(ram: int) -> bool:
        with make_device(board.at(ram)) as device:
            result = device.run(make_job())
        probe = Probe(ram, result.status.value, result.device_peak_bytes, result.peak_unified_bytes, result.elapsed_s)
        probes.append(probe)
        if on_probe is not None:
            on_probe(probe, result)
        if result.status not in (Status.OK, Status.DEVICE_OOM, Status.OOM_KILLED):
            raise _Stopped(_why(result))
        return result.ok

    start = guess or board.ram
    try:
        found = smallest_fitting(run, start=start, floor=floor, ceiling=ceiling)
    except _Stopped as stop:
        return None, probes, str(stop)
    return found, probes, None if found is not None else f"does not fit even on {ceiling} bytes (this machine's RAM)"


def smallest_fitting(fits: Callable[[int], bool], *, start: int, floor: int, ceiling: int) -> int | None:
    """The smallest multiple of STEP in (floor, ceiling] for which ``fits`` (monotonic) holds, None if none does.
    Gallops from ``start`` (steps doubling) down while it fits and up while it does not, then bisects the gap."""
    floor, ceiling = _grid(floor), _grid(ceiling)
    if ceiling <= floor:
        return None
    start = min(max(_grid(start), floor + STEP), ceiling)
    step = STEP
    if fits(start):
        hi, lo = start, start - step
        while lo > floor and fits(lo):
            hi, step = lo, step * 2
            lo = max(floor, hi - step)
        return _bisect(max(lo, floor), hi, fits)
    lo = start
    while lo < ceiling:
        hi = min(ceiling, lo + step)
        if fits(hi):
            return _bisect(lo, hi, fits)
        lo, step = hi, step * 2
    return None


class _Stopped(Exception):
    pass


def _why(result: LoadResult) -> str:
    return f"a probe ended {result.status.value}: {result.error_type}: {result.error_message}"


def _grid(n: int) -> int:
    return n // STEP * STEP


def _bisect(lo: int, hi: int, fits: Callable[[int], bool]) -> int:
    """The smallest multiple of STEP in (lo, hi] that fits, given that hi fits and lo does not (or is 0)."""
    lo, hi = _grid(lo), _grid(hi) if _grid(hi) == hi else _grid(hi) + STEP
    while hi - lo > STEP:
        mid = _grid((lo + hi) // 2)
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi


def idle_baseline(spec: str) -> int:
    """``measure_baseline`` on a device of ``spec`` started for it."""
    with make_device(spec) as device:
        return measure_baseline(device)


def measure_baseline(device: Any) -> int:
    """The RAM the board may hold besides a load (the worker and the job's process: ``board_baseline_bytes``),
    what fit adds to a loader's RAM bound, from a job of an empty checkpoint on the started ``device``."""
    import tempfile
    from pathlib import Path

    from safetensors.numpy import save_file

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.safetensors"
        save_file({}, str(empty))
        probe = device.run(LoadJob(checkpoint=str(empty), digests=False, timeout_s=120))
    baseline = probe.board_baseline_bytes
    if not probe.ok or baseline is None:
        raise MaliHilError(f"could not measure the worker's idle RAM on {device.spec}: {probe.error_message}")
    return baseline


def run_threshold(
    checkpoint: str,
    loaders: list[str],
    *,
    device: str,
    shard: tuple[int, int] | None = None,
    keep: str = "first-last",
    chunk_bytes: int,
    timeout_s: float = 600.0,
    on_probe: Callable[[str, Probe], None] | None = None,
) -> dict[str, Any]:
    """Search every loader's threshold on ``checkpoint``; the results document."""
    from mali_hil.harness.loaders import LoadOptions, bound_inputs, get_loader
    from mali_hil.harness.reports.environment import environment
    from mali_hil.runtime.memory import host_ram_bytes

    board = ResizableBoard(device)
    options = LoadOptions(shard=shard, chunk_bytes=chunk_bytes, keep=keep)
    inputs = bound_inputs(checkpoint, options)
    started = time.monotonic()
    baseline = idle_baseline(board.at(board.ram))
    ceiling = _grid(host_ram_bytes())
    floor = baseline + inputs.final_bytes
    thresholds: list[Threshold] = []
    results: list[LoadResult] = []
    for name in loaders:
        loader = get_loader(name)
        row = Threshold(
            name,
            inputs.final_bytes,
            predicted_ram(loader.bounds(checkpoint, options), board, baseline, ceiling),
            ceiling=ceiling,
        )

        def job(name: str = name) -> LoadJob:
            return LoadJob(
                checkpoint=checkpoint,
                loader=name,
                shard=shard,
                keep=keep,
                chunk_bytes=chunk_bytes,
                digests=False,
                timeout_s=timeout_s,
            )

        def seen(probe: Probe, result: LoadResult, name: str = name) -> None:
            results.append(result)
            if on_probe is not None:
                on_probe(name, probe)

        row.measured_ram, row.probes, row.stopped = search(
            board, job, floor=floor, ceiling=ceiling, guess=row.predicted_ram, on_probe=seen
        )
        thresholds.append(row)
    return {
        "kind": DOCUMENT_KIND,
        "version": 1,
        "checkpoint": checkpoint,
        "shard": list(shard) if shard else None,
        "keep": keep,
        "device": {"spec": device, "profile": board.profile.key, "board_ram": board.ram, "step": STEP},
        "idle_baseline_bytes": baseline,
        "wall_s": time.monotonic() - started,
        "environment": environment(results),
        "thresholds": [t.to_dict() for t in thresholds],
    }
