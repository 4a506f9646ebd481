"""A job's memory, measured from outside the job's process.

The warm worker forks a fresh child for each job (``mali_hil.harness.worker.serve``) and meters it from the
parent: the child's resident memory (RssAnon, the same figure a one-process worker measured of itself, since a
forked child maps its parent's pages too), plus what every process it started holds of its own (the worker is a
child subreaper, so even a setsid'd daemon stays among its descendants), and the OpenCL layer's counters, read
from the snapshot the layer keeps current after every allocation and free (``<stats file>.live``). Nothing the
job does in its own process changes what was sampled here: a peak that was seen stays seen, and the layer's
counters are kept as their highest values, so a reset or a forged lower snapshot cannot take a peak back.

Two spans: the *job* (from the child's ``ready``, the device open, to its exit) and the *load* inside it (from
``ready`` to ``loaded``, before the harness reads the tensors back for their digests). The figures are the
load's, as a user's loader would see them; the marks are the child's word, so the job's whole peak overrides them
when the read-back seemed to need more than it can (``READBACK_ALLOWANCE``): a mark sent early hides at most that.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mali_hil.errors import BackendError
from mali_hil.runtime.layer_stats import LayerStats, read_live_stats_file
from mali_hil.runtime.memory import MemoryPeaks, ProcessMemory, read_private_memory, read_process_memory, tree_pids
from mali_hil.runtime.oom_counters import OomKillCounts

INTERVAL = 0.002  # seconds between samples
RESCAN_INTERVAL = 0.050  # seconds between scans of /proc for the job's other processes (a scan costs ~3 ms)
READBACK_ALLOWANCE = 64 << 20  # what reading tensors back in 16 MiB chunks may add: a chunk, its NaN copy, slack


@dataclass(frozen=True)
class JobMemory:
    baseline: ProcessMemory  # at the job's start: the interpreter, tinygrad, PoCL opened
    peaks: MemoryPeaks  # over the load (or the whole job, when the marks cannot be believed)
    hwm_bytes: int  # the highest unified figure over the whole job, read-back included
    #: the worker's own at the job's start: the board holds it too, and the job's process, which shares it at
    #: first, copies as much of it as its Python writes to (reference counts), up to all of it
    worker: ProcessMemory = dataclasses.field(default_factory=ProcessMemory)


#: the layer's counters that only grow within a job (a fresh process per job: nobody resets them but a loader)
_RISING = ("peak_bytes", "allocations", "frees", "failed_allocations", "backend_refusals", "overcommitted_bytes",
           "last_refused_bytes", "generation")  # fmt: skip


class LayerWatch:
    """The layer's counters of one job, as the highest each reached across every snapshot read."""

    def __init__(self, stats_file: Path | None) -> None:
        self.stats_file = stats_file
        self.first: LayerStats | None = None
        self.last: LayerStats | None = None
        self._highest: dict[str, int] = {}

    def read(self) -> LayerStats | None:
        if self.stats_file is None:
            return None
        try:
            stats = read_live_stats_file(self.stats_file)
        except BackendError:
            return None  # not written yet (the device is not open), or torn by the job: keep what was seen
        self.first = self.first or stats
        self.last = stats
        for name in _RISING:
            self._highest[name] = max(self._highest.get(name, 0), getattr(stats, name))
        return stats

    def stats(self, at: LayerStats | None = None) -> LayerStats | None:
        """The counters at ``at`` (default: the last read), with every rising counter at its highest."""
        base = at or self.last
        return None if base is None else dataclasses.replace(base, **self._highest)


class JobMeter:
    """Samples job ``child`` and the other descendants of ``owner`` (this process) every ``INTERVAL``."""

    def __init__(self, child: int, layer: LayerWatch) -> None:
        self.child, self.layer = child, layer
        self._owner = os.getpid()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="mali-hil-job-meter", daemon=True)
        self._others: list[int] = []
        self._scanned = 0.0
        self.baseline: ProcessMemory | None = None
        self.worker = ProcessMemory()
        self._load = MemoryPeaks()
        self._job = MemoryPeaks()
        self._loading = False
        self.loaded_layer: LayerStats | None = None
        self.cleaned_layer: LayerStats | None = None
        self.marks: dict[str, float] = {}
        self.oom_kills = OomKillCounts()  # how much the OOM killer's counters rose while the job ran

    def start(self) -> None:
        """The child said ``ready``: its baseline is now, sampling starts."""
        with self._lock:
            self.marks["ready"] = time.monotonic()
            self.baseline = self._sample_locked()
            self.worker = read_process_memory(self._owner)  # this process: it exists
            self._loading = True
        self._thread.start()

    def loaded(self) -> None:
        """The child said ``loaded``: the load's span ends here (the job's goes on)."""
        with self._lock:
            self._sample_locked()
            self.marks["loaded"] = time.monotonic()
            self._loading = False
            self.loaded_layer = self.layer.last

    def cleaned(self) -> None:
        """The child said ``cleaned``: its tensors and tinygrad's caches are dropped; what is live is held elsewhere."""
        with self._lock:
            self._sample_locked()
            self.cleaned_layer = self.layer.last

    def stop(self) -> JobMemory | None:
        """The child exited; None when it never said ``ready``."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.layer.read()  # the snapshot the layer left: its last allocation, free or reset
        if self.baseline is None:
            return None
        peaks = self._load
        if self._job.unified_bytes > self._load.unified_bytes + READBACK_ALLOWANCE:
            peaks = self._job  # the read-back cannot need this much: the loaded mark came early
        return JobMemory(self.baseline, peaks, self._job.unified_bytes, self.worker)

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL):
            with self._lock:
                self._sample_locked()

    def _sample_locked(self) -> ProcessMemory:
        now = time.monotonic()
        if now - self._scanned >= RESCAN_INTERVAL:
            self._others = [pid for pid in tree_pids(self._owner) if pid not in (self._owner, self.child)]
            self._scanned = now
        try:
            sample = read_process_memory(self.child)
        except ProcessLookupError:
            sample = ProcessMemory()
        for pid in self._others:
            with contextlib.suppress(ProcessLookupError):
                sample = sample + read_private_memory(pid)
        self._job = self._job.update(sample)
        if self._loading:
            self._load = self._load.update(sample)
        self.layer.read()
        return sample
