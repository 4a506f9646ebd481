"""What the docker device costs and where its verdicts differ from the local emulated Mali's.

1. Overhead: worker start (container create + start + the worker's hello) and per-job overhead (wall time
   minus the job's own elapsed time, warm worker) on ``docker:PROFILE:RAM`` against ``emulated-mali:PROFILE:RAM``.
2. Agreement, watchdog against cgroup: the same jobs near the limit on both devices, verdict by verdict. Each
   loader's job is first measured on a roomy board (its unified peak P on the local emulated Mali); then boards of
   RAM = f x P for f in FRACTIONS run it on both devices. The watchdog counts the worker's anonymous + shmem
   memory; the container's memory cgroup counts everything charged to it (the board-side supervisor's own ~20 MB,
   page cache it cannot reclaim in time), so near the limit the cgroup is expected to be the stricter one.

    python benchmarks/docker_device.py [--profile mali-g52] [--jobs 30] [--loader naive --loader chunked]

Needs a running engine and the image of this checkout (``mali-hil emulator build-image``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ssh_board import overhead_ms
from mali_hil.harness.checkpoints import make_checkpoint
from mali_hil.harness.devices import Device, make_device
from mali_hil.harness.records.jobs import LoadJob

FRACTIONS = (0.80, 0.90, 0.95, 1.00, 1.05, 1.10, 1.25)
MIB = 1 << 20


def started(spec: str) -> tuple[Device, float]:
    began = time.perf_counter()
    device = make_device(spec)
    device.start()
    return device, time.perf_counter() - began


def overhead(profile: str, jobs: int, tiny: Path) -> dict[str, dict[str, float]]:
    figures = {}
    for kind in ("emulated-mali", "docker"):
        device, start_s = started(f"{kind}:{profile}:1GiB")
        try:
            ms = overhead_ms(device, LoadJob(checkpoint=str(tiny), loader="chunked"), jobs)
        finally:
            device.close()
        p90 = sorted(ms)[len(ms) * 9 // 10]
        figures[kind] = {"start_s": start_s, "median_ms": statistics.median(ms), "p90_ms": p90}
    return figures


def agreement(profile: str, loaders: list[str], checkpoint: Path) -> list[dict[str, object]]:
    rows = []
    for loader in loaders:
        with make_device(f"emulated-mali:{profile}:2GiB") as roomy:
            peak = roomy.run(LoadJob(checkpoint=str(checkpoint), loader=loader, digests=False)).peak_unified_bytes or 0
        for fraction in FRACTIONS:
            ram_mib = max(64, round(fraction * peak / MIB))
            row: dict[str, object] = {"loader": loader, "peak_mib": round(peak / MIB), "fraction": fraction,
                                      "ram_mib": ram_mib}  # fmt: skip
            for kind in ("emulated-mali", "docker"):
                with make_device(f"{kind}:{profile}:{ram_mib}MiB") as device:
                    result = device.run(LoadJob(checkpoint=str(checkpoint), loader=loader, digests=False))
                row[kind] = result.status.value
                row[f"{kind}_peak_mib"] = round((result.peak_unified_bytes or 0) / MIB)
                row[f"{kind}_evidence"] = None if result.oom_evidence is None else result.oom_evidence.value
            row["agree"] = row["emulated-mali"] == row["docker"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="mali-g52")
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--loader", action="append", default=[])
    parser.add_argument("--scale", type=float, default=0.3, help="llama-3.2-1b scale of the near-limit checkpoint")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tiny, llama = Path(tmp) / "tiny.safetensors", Path(tmp) / "llama.safetensors"
        make_checkpoint("tiny", tiny, fill="special")
        make_checkpoint("llama-3.2-1b", llama, scale=args.scale, fill="constant")
        figures = overhead(args.profile, args.jobs, tiny)
        print(json.dumps({"overhead": figures}), flush=True)
        rows = agreement(args.profile, args.loader or ["naive", "chunked"], llama)
    print("\n| loader | peak (MiB) | board RAM | emulated-mali (watchdog) | docker (cgroup) | agree |")
    print("| --- | ---: | ---: | --- | --- | --- |")
    for row in rows:
        print(f"| {row['loader']} | {row['peak_mib']} | {row['ram_mib']} MiB ({row['fraction']:.2f}x) | "
              f"{row['emulated-mali']} ({row['emulated-mali_peak_mib']} MiB) | {row['docker']} "
              f"({row['docker_peak_mib']} MiB) | {'yes' if row['agree'] else 'NO'} |")  # fmt: skip
    agreed = sum(bool(row["agree"]) for row in rows)
    print(f"\nagreement: {agreed}/{len(rows)} verdicts")
    for kind, numbers in figures.items():
        print(f"{kind}: worker start {numbers['start_s']:.2f} s, per-job overhead median "
              f"{numbers['median_ms']:.1f} ms, p90 {numbers['p90_ms']:.1f} ms")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
