"""What validating a very wide safetensors header costs: `mali-hil checkpoint check` of a header of N MB.

The header holds one-element F16 tensors (about 68 bytes of JSON each, so 100 MB is 1.4 million of them), the
widest a header gets. Wall and user CPU time and the peak RSS of the checking process (its own rusage, from
wait4), median of N runs.

    python benchmarks/header_check.py [--mb 100] [--runs 3]

Goal (issue 25): peak RSS <= 8 bytes a header byte, the process's own included (100 MB: about 0.8 GB), user CPU
<= 0.25 s per MB.
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def wide_checkpoint(path: Path, megabytes: float) -> int:
    entries, size, i = [], 1, 0
    while size < megabytes * 1e6 - 100:
        entry = f'"t{i}":{{"dtype":"F16","shape":[1],"data_offsets":[{2 * i},{2 * i + 2}]}}'
        entries.append(entry)
        size += len(entry) + 1
        i += 1
    raw = ("{" + ",".join(entries) + "}").encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(raw)) + raw + bytes(2 * i))
    return len(raw)


def checked(mali_hil: str, path: Path) -> dict[str, float]:
    started = time.monotonic()
    proc = subprocess.Popen([mali_hil, "checkpoint", "check", str(path)], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"checkpoint check failed on {path}")
    return {"wall_s": time.monotonic() - started, "user_s": usage.ru_utime, "rss_mib": usage.ru_maxrss / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100.0, help="header size in MB (at most 100, the format's)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mali-hil", default=str(Path(sys.executable).with_name("mali-hil")))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "wide.safetensors"
        header = wide_checkpoint(path, args.mb)
        runs = [checked(args.mali_hil, path) for _ in range(args.runs)]
    figures = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    per_byte = figures["rss_mib"] * 2**20 / header
    print(f"header {header / 1e6:.1f} MB: wall {figures['wall_s']:.1f} s, user {figures['user_s']:.1f} s, "
          f"peak RSS {figures['rss_mib']:.0f} MiB ({per_byte:.1f} bytes a header byte)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
