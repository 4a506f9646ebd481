"""Run a cluster: each node's load on its own fresh emulated board, in sequence or a few at a time.

Every job gets a board of its own (a new worker, so no node inherits another's allocator state or RAM), and the
outcome is whatever the board measured. Parallel jobs share this machine's cores and RAM: ``default_parallel``
runs only as many boards as the machine's available RAM holds whole, and never more than its cores.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from mali_hil.harness.cluster.plan import NodePlan, peak_tensor, verdict
from mali_hil.harness.devices import make_device
from mali_hil.harness.devices.device import Device
from mali_hil.harness.records.jobs import LoadJob
from mali_hil.harness.records.results import LoadResult
from mali_hil.runtime.memory import mem_available

HOST_RESERVE = 2 << 30  # RAM left to this process, the OS and the page cache the loaders read through


@dataclass(frozen=True)
class NodeJob:
    plan: NodePlan
    loader: str

    def load_job(self, checkpoint: str, n_layers: int, chunk_bytes: int, timeout_s: float) -> LoadJob:
        shard = self.plan.shard
        return LoadJob(
            checkpoint=checkpoint,
            loader=self.loader,
            shard=(shard.first_layer, shard.last_layer),
            keep=self.plan.keep,
            chunk_bytes=chunk_bytes,
            digests=False,
            timeout_s=timeout_s,
        )


def node_record(job: NodeJob, result: LoadResult) -> dict[str, Any]:
    """One row of the cluster table: the plan, the verdict, the peaks and the record itself."""
    return {
        **job.plan.to_dict(),
        "loader": job.loader,
        "verdict": verdict(result),
        "device_peak_bytes": result.device_peak_bytes,
        "peak_unified_bytes": result.peak_unified_bytes,
        "peak_tensor": peak_tensor(job.plan, result),
        "result": result.to_dict(),
    }


def default_parallel(board_ram: int | None) -> int:
    cores = os.cpu_count() or 1
    if board_ram is None:
        return 1
    available = mem_available()
    if available is None:
        return 1
    return max(1, min(cores, (available - HOST_RESERVE) // board_ram))


def run_nodes(
    jobs: Sequence[NodeJob],
    device_spec: str,
    make_job: Callable[[NodeJob], LoadJob],
    *,
    parallel: int = 1,
    on_start: Callable[[NodeJob], None] | None = None,
    on_done: Callable[[NodeJob, LoadResult], None] | None = None,
) -> list[tuple[NodeJob, LoadResult]]:
    """Each job on a fresh board; results in the order of ``jobs``. Ctrl-C kills every running board's worker
    (nothing is left behind) and re-raises once they are gone; jobs it cut short are not in any result."""
    active: set[Device] = set()
    lock = threading.Lock()
    stopping = threading.Event()

    def one(job: NodeJob) -> LoadResult:
        if stopping.is_set():
            raise KeyboardInterrupt
        device = make_device(device_spec)
        with lock:
            active.add(device)
        try:
            if on_start is not None:
                on_start(job)
            with device:
                if stopping.is_set():
                    raise KeyboardInterrupt
                return device.run(make_job(job))
        finally:
            with lock:
                active.discard(device)

    results: dict[int, LoadResult] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="mali-hil-node")
    try:
        pending: dict[Future[LoadResult], int] = {pool.submit(one, job): i for i, job in enumerate(jobs)}
        while pending:
            done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                i = pending.pop(future)
                results[i] = future.result()
                if on_done is not None:
                    on_done(jobs[i], results[i])
    except KeyboardInterrupt:
        # Ctrl-C: no new board starts; running ones have their worker killed (their thread reaps it and closes the
        # board, never this one: a device is not shared between threads) and their deaths are not recorded
        stopping.set()
        for future in pending:
            future.cancel()
        running = [future for future in pending if not future.cancelled()]
        while not all(future.done() for future in running):
            with lock:
                boards = list(active)
            for device in boards:
                device.interrupt()
            wait(running, timeout=0.2)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [(job, results[i]) for i, job in enumerate(jobs)]
