"""Peak resident memory of the current process during one job, anonymous and file-backed apart.

The worker measures itself: the parent's RAM watchdog enforces the budget over the worker's whole life, but a
warm worker serves many jobs and each needs its own peaks. A sampling thread splits memory the way
mali_hil.runtime.memory explains; VmHWM, reset through /proc/self/clear_refs, is the kernel's exact (unsampled) peak of
total RSS, kept beside it as a cross-check.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from mali_hil.runtime.memory import MemoryPeaks, ProcessMemory, peak_rss, read_process_memory, reset_peak_rss


@dataclass(frozen=True)
class JobMemory:
    baseline: ProcessMemory  # at the job's start: the interpreter, tinygrad, PoCL, earlier jobs' leftovers
    peaks: MemoryPeaks
    hwm_bytes: int  # the kernel's peak of total RSS over the job


class MemoryMeter:
    """Samples this process's memory every ``interval`` seconds between start() and stop()."""

    def __init__(self, interval: float = 0.002) -> None:
        self._interval = interval
        self._stop = threading.Event()
        self._peaks = MemoryPeaks()
        self._baseline = ProcessMemory()
        self._thread = threading.Thread(target=self._run, name="mali-hil-meter", daemon=True)

    def _sample(self) -> None:
        self._peaks = self._peaks.update(read_process_memory(os.getpid()))

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def start(self) -> MemoryMeter:
        reset_peak_rss(os.getpid())
        self._baseline = read_process_memory(os.getpid())
        self._peaks = self._peaks.update(self._baseline)
        self._thread.start()
        return self

    def stop(self) -> JobMemory:
        self._stop.set()
        self._thread.join()
        self._sample()
        return JobMemory(self._baseline, self._peaks, peak_rss(os.getpid()))
