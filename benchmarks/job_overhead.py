"""Warm-worker overhead per job: what the harness adds around a load, on the emulated Mali.

For each job, overhead = the device.run() wall time seen by the harness - the load's own elapsed time (the
worker's time from its job child's ``ready`` mark to its ``loaded`` mark: validation and the loader). So it counts
the JSON protocol, the pipe round trip and result building, and, since each job runs in a fresh child of the warm
worker (issue 25), the fork, the device opened in the child, the end of the child and of everything it started.
The job wall time is the figure to compare across versions. Digest readback is turned off (it is work the job
asked for, not overhead).

    python benchmarks/job_overhead.py [--device emulated-mali:mali-g610:3GiB] [--jobs 200] [--loader chunked]

Goal: median overhead <= 50 ms.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from mali_hil.harness.checkpoints import make_checkpoint
from mali_hil.harness.devices import make_device
from mali_hil.harness.records.jobs import LoadJob
from mali_hil.harness.records.results import Status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="emulated-mali:mali-g610:3GiB")
    parser.add_argument("--loader", default="chunked")
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "tiny.safetensors"
        make_checkpoint("tiny", checkpoint)
        job = LoadJob(checkpoint=str(checkpoint), loader=args.loader, digests=False)
        device = make_device(args.device)
        started = time.monotonic()
        with device:  # starts the worker: interpreter, tinygrad, the OpenCL device behind the layer
            start = time.monotonic() - started
            device.run(job)  # warm-up: first use of the loader's code paths
            first = time.monotonic() - started - start
            walls, loads = [], []
            for _ in range(args.jobs):
                began = time.perf_counter()
                result = device.run(job)
                walls.append(time.perf_counter() - began)
                assert result.status is Status.OK, result.error_message
                loads.append(result.elapsed_s)
    overhead = [1000 * (w - e) for w, e in zip(walls, loads, strict=True)]
    print(f"device {args.device}, loader {args.loader}, {args.jobs} jobs on one warm worker")
    print(f"worker start: {start * 1000:.0f} ms; first job on it: {first * 1000:.0f} ms")
    print(f"job wall time   median {1000 * statistics.median(walls):.1f} ms")
    print(f"load itself     median {1000 * statistics.median(loads):.1f} ms")
    p95 = statistics.quantiles(overhead, n=20)[-1]
    print(f"overhead        median {statistics.median(overhead):.1f} ms, p95 {p95:.1f} ms, max {max(overhead):.1f} ms")
    verdict = "met" if statistics.median(overhead) <= 50 else "MISSED"
    print(f"goal: median overhead <= 50 ms: {verdict}")


if __name__ == "__main__":
    main()
