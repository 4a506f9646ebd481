"""The board's side of a remote transport: ``python -m mali_hil.runtime.remote health|opencl|leftovers|supervise``.

Runs in mali-hil's venv on the board. ``supervise`` is the small remote supervisor: it runs the worker under the
same :class:`~mali_hil.runtime.supervisor.Supervised` as a local worker (its own session, the emulated board's
RAM watchdog when there is one, else the kernel's OOM killer as the enforcement), relays the job protocol between
its stdin/stdout and the worker, and adds two kinds of lines of its own on stdout:

    {"op": "memory", ...RamVerdict...}     what the RAM enforcement has seen, sent just before each result
    {"op": "end", ...ProcessEnd...}        how the worker ended, decided here from evidence on the board

and takes one of its own on stdin: ``{"op": "kill"}`` kills the worker's tree. When its stdin ends without an
``exit`` having passed (the harness died, or the connection dropped), it kills the worker at once: nothing runs
on after the harness is gone, and its temporary files (under ``WORKDIR/tmp``) are removed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from mali_hil.runtime.ram import RamVerdict
    from mali_hil.runtime.supervisor import ProcessEnd

MEMORY_OP, END_OP, KILL_OP = "memory", "end", "kill"


def supervisor_message(line: str) -> RamVerdict | ProcessEnd | None:
    """What this supervisor added to the worker's stream, read on the harness's side: a ``RamVerdict`` (memory),
    a ``ProcessEnd`` (end), or None for a line of the worker's own."""
    try:
        message = json.loads(line)
    except ValueError:
        return None
    op = message.get("op") if isinstance(message, dict) else None
    fields = {k: v for k, v in message.items() if k != "op"} if op in (MEMORY_OP, END_OP) else {}
    if op == MEMORY_OP:
        from mali_hil.runtime.ram import RamVerdict

        return RamVerdict.from_dict(fields)
    if op == END_OP:
        from mali_hil.runtime.supervisor import ProcessEnd

        return ProcessEnd.from_dict(fields)
    return None


def _write(out: BinaryIO, lock: threading.Lock, message: dict[str, Any] | bytes) -> None:
    line = message if isinstance(message, bytes) else (json.dumps(message) + "\n").encode()
    with lock:
        try:
            out.write(line)
            out.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass  # the harness is gone; the worker is killed by the stdin side


def supervise(argv: list[str], env: dict[str, str], ram_budget: int | None) -> int:
    from mali_hil.runtime.ram import select_enforcer
    from mali_hil.runtime.supervisor import Supervised

    out, lock = sys.stdout.buffer, threading.Lock()
    enforcer = select_enforcer(ram_budget) if ram_budget is not None else None
    process = Supervised(argv, env={**os.environ, **env}, enforcer=enforcer, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)  # fmt: skip
    graceful = threading.Event()

    def end_now(*_: object) -> None:  # SIGTERM/SIGHUP: the session is going away
        process.kill()

    signal.signal(signal.SIGTERM, end_now)
    signal.signal(signal.SIGHUP, end_now)

    def relay_out() -> None:
        assert process.proc.stdout is not None
        for line in process.proc.stdout:
            try:
                op = json.loads(line).get("op")
            except (ValueError, AttributeError):
                op = None
            if op == "result":
                memory = process.memory()
                if memory is not None:
                    _write(out, lock, {"op": MEMORY_OP, **memory.to_dict()})
            _write(out, lock, line)

    def relay_in() -> None:
        worker_in = process.proc.stdin
        assert worker_in is not None
        for line in sys.stdin.buffer:
            try:
                op = json.loads(line).get("op")
            except (ValueError, AttributeError):
                op = None
            if op == KILL_OP:
                process.kill()
                continue
            if op == "exit":
                graceful.set()
            try:
                worker_in.write(line)
                worker_in.flush()
            except (BrokenPipeError, OSError):
                pass
        with contextlib.suppress(OSError):
            worker_in.close()
        if not graceful.is_set():
            process.kill()  # stdin ended without an exit: the harness or its connection is gone

    # The worker's output decides when this ends: it closes when the worker exits or is killed (for memory on
    # the board, by the harness's kill, or because the harness went away), and then the end is reported at once.
    threading.Thread(target=relay_in, name="mali-hil-relay-in", daemon=True).start()
    relay_out()
    end = process.end(grace=10.0 if graceful.is_set() else 0.0)
    _write(out, lock, {"op": END_OP, **end.to_dict()})
    return 0


def health(workdir: Path, emulate: str | None, ram_budget: int | None) -> dict[str, Any]:
    """What the harness checks before it uses the board; every probe that fails says why."""
    from mali_hil import __version__
    from mali_hil.runtime.memory import mem_available
    from mali_hil.runtime.ram import select_enforcer
    from mali_hil.runtime.supervisor import ISOLATED

    facts: dict[str, Any] = {"python": list(sys.version_info[:3]), "mali_hil": __version__, "workdir": str(workdir)}
    facts["mem_available"] = mem_available()
    facts["disk_free"] = shutil.disk_usage(workdir).free
    facts["enforcement"] = select_enforcer(ram_budget).name.value if ram_budget is not None else "kernel"
    probe = [sys.executable, *ISOLATED, "-m", "mali_hil.runtime.remote", "opencl"]
    if emulate:
        probe += ["--emulate", emulate]
    done = subprocess.run(probe, capture_output=True, text=True, timeout=300, check=False)
    try:
        facts["opencl"] = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        facts["opencl"] = {"error": f"the OpenCL probe failed (exit {done.returncode}): {done.stderr.strip()[-800:]}"}
    return facts


def leftovers(mark: str) -> list[dict[str, Any]]:
    """Processes on this board whose environment or command line carries ``mark`` (``NAME=VALUE``, which the
    harness gives every process it starts here for one place), other than this one and its parents: what a run
    left behind. Read from /proc (a Linux board); a process that ends while it is read is not counted."""
    mine, pid = set(), os.getpid()
    while pid > 1:  # this probe, the shell and sshd session that started it
        mine.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat[stat.rfind(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            break
    wanted, found = mark.encode(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        if wanted in environ or wanted in cmdline:
            found.append({"pid": int(entry.name), "cmdline": b" ".join(cmdline).decode(errors="replace")[:300]})
    return found


def opencl(emulate: str | None) -> dict[str, Any]:
    """The first OpenCL device this board gives a process (through the emulated Mali's layer with ``emulate``)."""
    try:
        if emulate:
            from mali_hil.emulator.emulated_board import EmulatedBoard

            EmulatedBoard.from_spec(emulate).activate()
        import pyopencl as cl

        device = cl.get_platforms()[0].get_devices()[0]
        return {"platform": device.platform.name, "device_name": device.name, "global_mem": device.global_mem_size,
                "max_alloc": device.max_mem_alloc_size, "fp16": "cl_khr_fp16" in device.extensions.split()}  # fmt: skip
    except Exception as exc:  # any failure is the board's answer, reported as text
        return {"error": f"{type(exc).__name__}: {exc}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mali_hil.runtime.remote")
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("supervise")
    run.add_argument("--workdir", type=Path, required=True)
    run.add_argument("--ram-budget", type=int, default=None)
    run.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("argv", nargs=argparse.REMAINDER)
    check = sub.add_parser("health")
    check.add_argument("--workdir", type=Path, required=True)
    check.add_argument("--emulate", default=None)
    check.add_argument("--ram-budget", type=int, default=None)
    probe = sub.add_parser("opencl")
    probe.add_argument("--emulate", default=None)
    left = sub.add_parser("leftovers")
    left.add_argument("--mark", required=True, metavar="NAME=VALUE")
    args = parser.parse_args(argv)

    if args.action == "supervise":
        command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not command:  # the image's entry point has no default: the harness names the worker it supervises
            parser.error("supervise: name the command to supervise after --, e.g. -- python3 -P -m MODULE")
        tmp = args.workdir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        tempfile.tempdir = str(tmp)  # the supervisor's private folders live here, and go with it
        env = dict(pair.split("=", 1) for pair in args.env)
        return supervise(command, env, args.ram_budget)
    if args.action == "health":
        print(json.dumps(health(args.workdir, args.emulate, args.ram_budget)))
    elif args.action == "leftovers":
        print(json.dumps(leftovers(args.mark)))
    else:
        print(json.dumps(opencl(args.emulate)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
