"""``mali-hil emulator list|info|run``: the emulated Mali boards, what OpenCL shows on one, running a command on one.

``emulator run`` exits with the command's own exit code when it exited by itself (128+N when a signal N other
than an OOM kill ended it, as shells report it), 137 (128+SIGKILL, what a shell shows for "Killed") when it was
OOM-killed, 124 (as timeout(1)) when it ran past ``--timeout``, and 2 for mali-hil's own errors.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import TYPE_CHECKING, Any

from mali_hil.emulator.profile import available_profiles, load_profile
from mali_hil.errors import MaliHilError
from mali_hil.harness.cli.args import seconds, size, whole_number
from mali_hil.sizes import format_size

if TYPE_CHECKING:
    from mali_hil.emulator.launcher import BoardRun

EXIT_OOM_KILLED = 137
EXIT_TIMEOUT = 124


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "emulator",
        help="list emulated Mali boards, inspect one through OpenCL, run a command on one",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="emulator_action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="the Mali profiles and their boards")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=_list)

    info = actions.add_parser(
        "info",
        help="clinfo-like view of the emulated device, queried through OpenCL on the board",
        description="Start a process on the board and ask OpenCL (pyopencl, through the ICD loader and the "
        "mali-hil layer) what it sees: the same answers tinygrad gets.",
    )
    info.add_argument("board", metavar="PROFILE[:RAM]", help="e.g. mali-g610 or mali-g610:3GiB")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_info)

    build = actions.add_parser(
        "build-backend",
        help="build a PoCL with native fp16 (cl_khr_fp16) for the emulated Mali; used when present",
        description="Fetch PoCL 6.0's source from Debian's archive (apt, signature checked, SHA-256 pinned), build "
        "it against LLVM 16 with cl_khr_fp16, and install it in mali-hil's cache under a name that hashes the "
        "source, the options, LLVM's version and the CPU level: a second run finds it and does nothing. Boards "
        "then run on it (fp16: native) unless MALI_HIL_POCL=system. Needs the apt packages it names; takes "
        "about 7 minutes of CPU (much longer on a busy machine).",
    )
    build.add_argument("--jobs", type=whole_number(1, 1024), default=None, metavar="N",
                       help="parallel compile jobs (default: CPUs)")  # fmt: skip
    build.set_defaults(func=_build_backend)

    run = actions.add_parser(
        "run",
        help="run a command on an emulated board (RAM budget enforced)",
        description=__doc__,
        usage="mali-hil emulator run PROFILE[:RAM] [--ram-budget SIZE] [--timeout S] [--json] -- CMD ...",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("board", metavar="PROFILE[:RAM]", help="e.g. mali-g610:3GiB")
    run.add_argument(
        "--ram-budget", type=size, default=None, metavar="SIZE", help="RAM the job may use (default: the board's RAM)"
    )
    run.add_argument("--timeout", type=seconds, default=None, metavar="S", help="wall-clock limit in seconds")
    run.add_argument("--json", action="store_true", help="print the run record as JSON, as the last line of stdout")
    run.add_argument("cmd", nargs="+", metavar="CMD", help="the command, after --")
    run.set_defaults(func=_run)

    image = actions.add_parser(
        "build-image",
        help="build the emulator as a Docker image (for --device=docker), cached by content",
        description="Build the emulator image: PoCL, the ICD loader, our layer and this mali-hil, its entry point "
        "the job worker. Without --base the base is made here with debootstrap (no registry needed).",
    )
    image.add_argument("--base", default=None, metavar="IMAGE", help="base image with apt, e.g. debian:12-slim")
    image.add_argument("--tag", default=None, metavar="T", help="tag for the image (default: by content hash)")
    image.add_argument("--json", action="store_true", help="print the build record as JSON")
    image.set_defaults(func=_build_image)

    from mali_hil.harness.cli import conformance

    conformance.register(actions)


def _build_backend(args: argparse.Namespace) -> int:
    import time

    from mali_hil.emulator.backend_build import build_backend

    started = time.monotonic()
    built = build_backend(jobs=args.jobs, log=lambda line: print(line, flush=True))
    print(f"fp16 backend: {built.icd} ({time.monotonic() - started:.0f} s)")
    return 0


def _list(args: argparse.Namespace) -> int:
    rows = []
    for key in available_profiles():
        p = load_profile(key)
        rows.append(
            {
                "profile": key,
                "device": p.name,
                "board_ram": p.board_ram,
                "job_ram": p.job_budget() if p.memory is None or p.memory.refusal() is None else None,
                "global_mem": p.global_mem,
                "max_alloc": p.max_alloc,
                "oom_failure": p.oom_failure.value,
                "oom_trigger": p.oom_trigger.value,
                "estimated_fields": sum(p.is_estimated(name) for name in p.sources),
            }
        )
    if args.json:
        print(json.dumps(rows))
        return 0
    header = ("PROFILE", "DEVICE", "BOARD RAM", "A JOB GETS", "GLOBAL MEM", "MAX ALLOC", "OOM FAILURE", "TRIGGERED BY",
              "ESTIMATED")  # fmt: skip
    table = [header] + [
        (
            r["profile"],
            r["device"],
            format_size(r["board_ram"]),
            "not emulated" if r["job_ram"] is None else format_size(r["job_ram"]),
            format_size(r["global_mem"]),
            format_size(r["max_alloc"]),
            r["oom_failure"],
            "RAM" if r["oom_trigger"] == "ram" else "device memory or RAM",
            f"{r['estimated_fields']} fields",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _info(args: argparse.Namespace) -> int:
    from mali_hil.emulator.emulated_board import EmulatedBoard
    from mali_hil.emulator.info import describe, render

    described = describe(EmulatedBoard.from_spec(args.board))
    print(json.dumps(described) if args.json else render(described))
    return 0


def _run(args: argparse.Namespace) -> int:
    from mali_hil.emulator.emulated_board import EmulatedBoard
    from mali_hil.emulator.launcher import run_on_board

    cmd = args.cmd[1:] if args.cmd[0] == "--" else args.cmd
    if not cmd:
        raise MaliHilError("no command to run: give it after --, e.g. `mali-hil emulator run mali-g610 -- python x.py`")
    board = EmulatedBoard.from_spec(args.board, args.ram_budget)
    sys.stdout.flush()  # our own output must not come out after the job's
    run = run_on_board(board, cmd, timeout=args.timeout)
    print(verdict_line(run), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(run.to_dict()), flush=True)
    return exit_code(run)


def _build_image(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from mali_hil.emulator.image import build_image
    from mali_hil.sizes import format_size

    built = build_image(args.base, args.tag, log=None if args.json else print)
    if args.json:
        print(json.dumps(asdict(built)))
        return 0
    how = "found (same content)" if built.cached else "built"
    print(
        f"{built.tag}: {how} in {built.seconds:.1f} s, {format_size(built.size_bytes)}; backend {built.backend}; "
        f"fp16: {built.fp16}" + ("" if built.fp16 == "native" else " (the image's PoCL lacks cl_khr_fp16)")
    )
    return 0


def verdict_line(run: BoardRun) -> str:
    """One line saying how a BoardRun ended, for people."""
    from mali_hil.emulator.launcher import RunStatus
    from mali_hil.runtime.verdict import OomEvidence

    peak, limit = format_size(run.peak_unified_bytes), format_size(run.ram_limit)
    what = "budget" if run.enforcement != "container" else "container limit"
    if run.status is RunStatus.OOM_KILLED:
        if run.end.evidence is OomEvidence.LAYER and run.device is not None:
            detail = (
                f"device memory past the {format_size(run.device.cap_bytes)} cap, killed by the layer as the "
                f"OOM killer would; peak unified {peak} of {what} {limit}"
            )
        elif run.peak_unified_bytes > run.ram_limit:
            detail = f"peak unified {peak} > {what} {limit}"
        else:
            detail = f"killed by the kernel at the {run.enforcement} limit; peak unified seen {peak} of {what} {limit}"
    elif run.status is RunStatus.TIMEOUT:
        detail = f"killed after {run.timeout:g} s; peak unified {peak} of {what} {limit}"
    else:
        from mali_hil.runtime.verdict import backend_crash

        ended = f"exit {run.returncode}" if run.returncode >= 0 else f"killed by {_signal_name(-run.returncode)}"
        ended = f"killed by {crash}" if (crash := backend_crash(run.returncode)) else ended
        detail = (
            f"{ended}, peak unified {peak} of {what} {limit}, "
            f"file-backed {format_size(run.peak_file_bytes)}, {run.elapsed:.2f} s"
        )
    if run.watchdog_stalled:
        detail += f"; WARNING: the watchdog was not scheduled for {run.max_sample_gap:.2f} s, budget unenforced then"
    return f"mali-hil: {run.status.value} ({detail})"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def exit_code(run: BoardRun) -> int:
    """The shell-style exit code for a BoardRun (see the module docstring)."""
    from mali_hil.emulator.launcher import RunStatus

    if run.status is RunStatus.OOM_KILLED:
        return EXIT_OOM_KILLED
    if run.status is RunStatus.TIMEOUT:
        return EXIT_TIMEOUT
    return run.returncode if run.returncode >= 0 else 128 - run.returncode
