"""`mali-hil run`: the main job. Runs the property suite on a device and ends with the per-variant table."""

from __future__ import annotations

import argparse
from pathlib import Path

from mali_hil.errors import MaliHilError
from mali_hil.harness.cli.args import whole_number
from mali_hil.harness.devices.registry import DEFAULT_DEVICE

INTERRUPT_GRACE = 60.0  # seconds an interrupted suite gets to stop its workers and write its reports
# plugins loaded into the child pytest only: nobody else's pytest gets them
PROGRESS_PLUGIN = "mali_hil.harness.plugin.progress_line"
PARALLEL_PLUGIN = "mali_hil.harness.plugin.parallel"
# Each xdist worker starts its own device workers and compiles its own kernels: past a few, the boards they share
# (and the memory they hold) cost more than another core gives.
MAX_WORKERS = 4


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("run", help="run the property suite on a device (the main job)")
    parser.add_argument("--device", action="append", default=[], help=f"default: {DEFAULT_DEVICE}")
    parser.add_argument("--loader", action="append", default=[], help="default: every built-in variant")
    parser.add_argument("--profile", choices=("dev", "ci", "nightly"), default=None,
                        help="hypothesis profile (default: ci when CI is set, else dev)")  # fmt: skip
    parser.add_argument("--junitxml", default=None, help="also write a JUnit XML report here")
    parser.add_argument("--results", default=None, help="write every job's result record here (JSON lines)")
    parser.add_argument("--workers", type=whole_number(1, MAX_WORKERS), default=None, metavar="N",
                        help="test processes side by side (pytest-xdist, at most"
                        f" {MAX_WORKERS}); default 2, 1 on one core: see default_workers")  # fmt: skip
    parser.add_argument(
        "--progress",
        choices=("auto", "on", "off"),
        default="auto",
        help="the progress line (tests done / total, loaders running); auto: only on a terminal",
    )
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: more pytest arguments")
    parser.set_defaults(func=_run)


def default_workers() -> int:
    """Two test processes where two cores can run them (pytest-xdist, one loader's tests per process), else one.
    Two took the main job to 67-72 s cold and 53-65 s warm here, against 87 s and 69 s for one
    (benchmarks/run_time.py, medians of 3, two series). Their verdicts are one process's. The one that was not
    (mmap's RAM growth past the default chunk over its bound in about 1 run of 8) came from the layer letting
    PoCL's late release of a freed staging pair race the next allocation on busy cores. The layer now waits for
    that release (test: tests/emulator/test_unified_memory.py). In 19 runs with two processes since, none failed;
    in the 12 whose records were kept, that judged job grew 0.01 MiB over its device peak each time."""
    import os

    return max(1, min(2, len(os.sched_getaffinity(0))))


def choose_workers(given: int | None, devices: list[str]) -> int:
    """``--workers``, else the default; one where a device's board takes one worker of ours at a time (a physical
    or leased board): each test process is a session of its own, which would lease the board again (and wait for
    the first lease) or put a second worker beside the first on the board's RAM. More than one is refused there."""
    from mali_hil.harness.devices.registry import env_devices, one_worker

    single = next((device for device in devices or env_devices() if one_worker(device)), None)
    if single is None:
        return given or default_workers()
    if given is not None and given > 1:
        raise MaliHilError(f"--workers {given}: {single} takes one worker at a time, which one test process holds "
                           "(each process would lease the board again or share its RAM); use --workers 1")  # fmt: skip
    return 1


def parallel_args(workers: int) -> list[str]:
    """pytest-xdist's arguments for ``workers`` processes; the parallel plugin keeps each loader's tests in one."""
    if workers <= 1:
        return ["-p", "no:xdist"]
    return ["-p", PARALLEL_PLUGIN, "-n", str(workers), "--dist", "loadscope"]


def progress_args(choice: str) -> list[str]:
    """The progress plugin and its choice. While it draws, pytest's classic output keeps the line free of the
    ``[ 42%]`` markers that would be written into it."""
    import sys

    draws = choice == "on" or (choice == "auto" and sys.stdout.isatty())
    args = ["-p", PROGRESS_PLUGIN, f"--mali-hil-progress={choice}"]
    return [*args, "-o", "console_output_style=classic"] if draws else args


def _run(args: argparse.Namespace) -> int:
    import sys
    import tempfile

    from mali_hil.harness.cli.suite_process import check_tests_ran, run_child
    from mali_hil.harness.plugin.suite import suite_path
    from mali_hil.harness.records.results_file import check_writable
    from mali_hil.runtime.supervisor import safe_python

    for what, output in (("--junitxml", args.junitxml), ("--results", args.results)):
        if output:
            check_writable(output, what)  # before the suite runs for minutes, not after it
    suite = suite_path()
    # A child pytest: this process has imported mali-hil already, which pytest could no longer assert-rewrite.
    # The suite's folder is a package; pytest must import it under the name it is installed as.
    python, env = safe_python(sys.executable)
    argv = [*python, "-m", "pytest", str(suite), "-p", "no:cacheprovider", "-q", "-rfEx"]
    argv += parallel_args(choose_workers(args.workers, args.device)) + progress_args(args.progress)
    argv += [f"--device={d}" for d in args.device] + [f"--loader={loader}" for loader in args.loader]
    if args.profile:
        argv.append(f"--mali-hil-profile={args.profile}")
    if args.results:
        argv.append(f"--mali-hil-results={args.results}")
    argv += [a for a in args.pytest_args if a != "--"]
    with tempfile.TemporaryDirectory(prefix="mali-hil-run-") as scratch:
        # the JUnit report is how the run shows that tests ran: asked for or not, pytest writes one
        junit = Path(args.junitxml or Path(scratch) / "junit.xml")
        code = run_child([*argv, f"--junitxml={junit}"], env, INTERRUPT_GRACE)
        return check_tests_ran(junit, asked=bool(args.junitxml)) if code == 0 else code


