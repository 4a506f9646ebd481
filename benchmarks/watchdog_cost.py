"""What the RAM watchdog costs while it watches: CPU seconds per second of watching, on an idle job.

Watches a sleeping child (an idle warm worker is the common case: it is watched between jobs too) for
``--seconds``, once with the tree scanned at every sample (``--rescan 0``, the behaviour before the scan was
spaced out) and once with the default spacing, and prints the watchdog thread's CPU share of one core and how
many processes this machine has (the scan reads every one of them).

    python benchmarks/watchdog_cost.py [--seconds 5] [--budget-mib 1024]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time

from mali_hil.runtime import ram


def watch_cost(seconds: float, budget: int, rescan: float) -> tuple[float, int]:
    ram.RESCAN_INTERVAL = rescan
    child = subprocess.Popen(["sleep", str(seconds + 5)])
    try:
        enforcer = ram.WatchdogEnforcer(budget)
        start = time.process_time()
        enforcer.start(child.pid)
        time.sleep(seconds)
        verdict = enforcer.stop()
        used = time.process_time() - start  # this process: only the watchdog thread works meanwhile
        return used / seconds, verdict.samples
    finally:
        child.kill()
        child.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--budget-mib", type=int, default=1024)
    args = parser.parse_args()
    default = ram.RESCAN_INTERVAL
    processes = sum(name.isdigit() for name in os.listdir("/proc"))
    print(f"processes on this machine: {processes}")
    for label, rescan in (("scan at every sample", 0.0), (f"scan every {default * 1000:.0f} ms", default)):
        share, samples = watch_cost(args.seconds, args.budget_mib << 20, rescan)
        print(f"{label:24} {share * 100:6.2f} % of one core, {samples / args.seconds:6.0f} samples/s")


if __name__ == "__main__":
    main()
