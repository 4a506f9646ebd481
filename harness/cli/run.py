"""`mali-hil run`: the main job. Runs the property suite on a device and ends with the per-variant table."""

from __future__ import annotations

import argparse
from pathlib import Path

from emulator.errors import MaliHilError

SUITE = Path(__file__).resolve().parents[2] / "tests" / "properties"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("run", help="run the property suite on a device (the main job)")
    parser.add_argument("--device", action="append", default=[], help="default: emulated-mali:mali-g610:3GiB")
    parser.add_argument("--loader", action="append", default=[], help="default: every built-in variant")
    parser.add_argument("--profile", choices=("dev", "ci", "nightly"), default=None,
                        help="hypothesis profile (default: ci when CI is set, else dev)")  # fmt: skip
    parser.add_argument("--junitxml", default=None, help="also write a JUnit XML report here")
    parser.add_argument("--results", default=None, help="write every job's result record here (JSON lines)")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: more pytest arguments")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import subprocess
    import sys

    if not SUITE.is_dir():
        raise MaliHilError(
            f"the property suite is not at {SUITE}: `mali-hil run` needs a source checkout of mali-hil "
            "(git clone, then `bash ci/setup.sh`)"
        )
    # A child pytest: this process has imported mali-hil already, which pytest could no longer assert-rewrite.
    argv = [sys.executable, "-m", "pytest", str(SUITE), "-p", "no:cacheprovider", "-q", "-rfEx"]
    argv += [f"--device={d}" for d in args.device] + [f"--loader={loader}" for loader in args.loader]
    if args.profile:
        argv.append(f"--hypothesis-profile={args.profile}")
    if args.junitxml:
        argv.append(f"--junitxml={args.junitxml}")
    if args.results:
        argv.append(f"--mali-hil-results={args.results}")
    argv += [a for a in args.pytest_args if a != "--"]
    return subprocess.call(argv)
