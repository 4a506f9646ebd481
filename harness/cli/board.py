"""`mali-hil board capture|diff`: a real board's emulated twin, made from the board, and how often it agrees."""

from __future__ import annotations

import argparse
from pathlib import Path

from mali_hil.errors import MaliHilError
from mali_hil.harness.cli.args import seconds, share, size, whole_number
from mali_hil.harness.cli.run import MAX_WORKERS


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("board", help="capture a real board's profile (its emulated twin); diff board and twin")
    board_sub = parser.add_subparsers(dest="board_command", required=True, metavar="ACTION")
    capture = board_sub.add_parser("capture", help="a profile file of a board, through its own OpenCL driver")
    capture.add_argument("device", help="ssh://[user@]host[:port][?...] or labgrid:PLACE")
    capture.add_argument("-o", "--output", type=Path, default=None, help="profile file (default profiles/HOST.toml)")
    capture.add_argument("--ram", type=size, default=None,
                         help="the board's nominal RAM, as on its label (default: MemTotal rounded up)")  # fmt: skip
    capture.add_argument(
        "--min-available",
        type=share,
        default=0.5,
        help="refuse a board whose MemAvailable is below this share of MemTotal (default 0.5)",
    )
    capture.add_argument(
        "--probe-budget",
        type=size,
        default=None,
        help="at most this much RAM for the allocation probe (default MemAvailable - 256 MiB)",
    )
    capture.add_argument("--timeout", type=seconds, default=600.0, help="seconds for the capture on the board")
    capture.set_defaults(func=_capture)
    diff = board_sub.add_parser("diff", help="the same tests on a board and its twin: verdicts, peaks, fidelity")
    diff.add_argument("board", help="the board, e.g. ssh://host or labgrid:PLACE")
    diff.add_argument("twin", help="its twin, e.g. emulated-mali:profiles/HOST.toml")
    diff.add_argument("-o", "--output", type=Path, default=Path("board-diff"), help="folder (default board-diff)")
    diff.add_argument("--workers", type=whole_number(1, MAX_WORKERS), default=None,
                      help="test processes per run (as mali-hil run's)")
    diff.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: pytest arguments for both runs")
    diff.set_defaults(func=_diff)


def _capture(args: argparse.Namespace) -> int:
    from mali_hil.harness.twin.capture import capture
    from mali_hil.sizes import format_size

    done = capture(args.device, args.output, ram=args.ram, min_available=args.min_available,
                   probe_budget=args.probe_budget, timeout=args.timeout)  # fmt: skip
    profile, memory = done.profile, done.profile.memory
    assert memory is not None
    print(f"wrote {done.path}: {profile.name} ({profile.platform_name}, driver {profile.driver_version})")
    print(
        f"  RAM: {format_size(profile.board_ram)} nominal, MemTotal {format_size(memory.mem_total)}, "
        f"a job gets {format_size(memory.mem_available)} (MemAvailable at idle): the twin's budget"
    )
    swap = f"{format_size(memory.swap_total)}" + (f" (zram {memory.zram_algorithm})" if memory.zram_size else "")
    print(
        f"  swap {swap}, CMA {format_size(memory.cma_total)}, overcommit {memory.overcommit_memory}, "
        f"min_free_kbytes {memory.min_free_kbytes}"
    )
    print(
        f"  out of memory: {profile.oom_failure.value} (trigger {profile.oom_trigger.value}); max alloc + 1: "
        f"{profile.over_max_alloc}; probe peak on the board {format_size(done.probe_peak)}"
    )
    why = memory.refusal()
    if why:
        print(f"  note: this board cannot be emulated as captured: {why}")
    print(f"  {done.seconds:.1f} s; run its twin with --device=emulated-mali:{done.path}")
    return 0


def _diff(args: argparse.Namespace) -> int:
    from mali_hil.harness.twin.diff import board_diff, terminal

    extra = [a for a in args.pytest_args if a != "--"]
    if extra[:1] in (["-o"], ["--output"]):  # argparse leaves everything after BOARD TWIN to pytest
        raise MaliHilError("board diff: give -o before BOARD TWIN (what follows them goes to pytest)")
    doc = board_diff(args.board, args.twin, args.output, extra, workers=args.workers)
    print(terminal(doc))
    print(f"wrote {args.output / 'summary.json'} and {args.output / 'summary.md'}")
    return 0 if doc["fidelity"]["agree"] == doc["fidelity"]["total"] else 1
