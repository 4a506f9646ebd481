"""Time to verdict of the main job: `mali-hil run` (CI profile) cold and warm, wall and CPU time, median of N.

Cold: a fresh, empty cache home (``XDG_CACHE_HOME``), so PoCL's kernel cache, tinygrad's compile cache, the built
layer and mali-hil's generated checkpoints are all made again. Warm: the same cache home right after the cold run.
Runs alternate cold, warm, cold, warm, ... so both see the same machine load. CPU time is user + system of every
process the run started (pytest, xdist workers, device workers, compilers), from the children's rusage.

    python benchmarks/run_time.py [--runs 3] [--mali-hil PATH] [--json out.json] [-- RUN ARGS [-- PYTEST ARGS]]

Goal (issue 14): median wall <= 60 s warm and <= 90 s cold on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOALS = {"cold": 90.0, "warm": 60.0}


def timed_run(mali_hil: str, cache_home: Path, extra: list[str], log: Path) -> dict[str, float | int]:
    env = {**os.environ, "CI": "true", "XDG_CACHE_HOME": str(cache_home)}
    for name in ("POCL_CACHE_DIR", "CACHEDB", "MALI_HIL_CACHE_DIR"):  # would point a run past its cache home
        env.pop(name, None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    with log.open("w", encoding="utf-8") as out:
        code = subprocess.run([mali_hil, "run", *extra], env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "exit": code}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mali-hil", default=str(Path(sys.executable).with_name("mali-hil")))
    parser.add_argument("--json", default=None, help="also write every run's figures here")
    parser.add_argument("--logs", default=None, help="keep each run's output in this folder")
    parser.add_argument("run_args", nargs=argparse.REMAINDER,
                        help="after --: more `mali-hil run` arguments (and after a second --, pytest's)")  # fmt: skip
    args = parser.parse_args()
    extra = args.run_args[1:] if args.run_args[:1] == ["--"] else args.run_args  # later ones are mali-hil run's

    runs: dict[str, list[dict[str, float | int]]] = {"cold": [], "warm": []}
    logs = Path(args.logs or tempfile.mkdtemp(prefix="mali-hil-run-time-"))
    logs.mkdir(parents=True, exist_ok=True)
    for i in range(args.runs):
        cache_home = Path(tempfile.mkdtemp(prefix="mali-hil-cache-"))
        try:
            for kind in ("cold", "warm"):
                figures = timed_run(args.mali_hil, cache_home, extra, logs / f"{kind}-{i + 1}.log")
                runs[kind].append(figures)
                print(f"{kind} {i + 1}: {figures['wall_s']} s wall, {figures['cpu_s']} s CPU, exit {figures['exit']}",
                      flush=True)  # fmt: skip
        finally:
            shutil.rmtree(cache_home, ignore_errors=True)

    print(f"logs: {logs}")
    summary = {}
    for kind, figures in runs.items():
        wall = statistics.median(f["wall_s"] for f in figures)
        cpu = statistics.median(f["cpu_s"] for f in figures)
        failed = sum(f["exit"] != 0 for f in figures)
        summary[kind] = {"median_wall_s": wall, "median_cpu_s": cpu, "runs": figures}
        # a failed run's time is not a time to verdict: no goal is judged on it
        verdict = "no verdict on" if failed else "meets" if wall <= GOALS[kind] else "misses"
        print(f"{kind}: median {wall:.1f} s wall, {cpu:.1f} s CPU over {len(figures)} runs ({failed} failed);"
              f" {verdict} the {GOALS[kind]:.0f} s goal")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 1 if any(f["exit"] != 0 for figures in runs.values() for f in figures) else 0


if __name__ == "__main__":
    sys.exit(main())
