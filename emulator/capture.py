"""The board's side of ``mali-hil board capture``: ``python -m mali_hil.emulator.capture [--emulate SPEC]``.

Runs in mali-hil's venv on the board and prints one JSON document: the OpenCL identity through the board's own
driver (every field a profile has, asked by real calls in a child process), the memory a job really gets (from
``/proc`` and ``/sys``), and the allocation probe of :mod:`.alloc_probe` run through the driver, each step in a
child under a RAM budget below MemAvailable so that the board survives the fill. With ``--emulate`` the board
runs the emulated Mali instead: the identity and the probe go through the layer and its budget, and the memory
facts are the emulated board's (its profile's ``[memory]``), which is what a loopback "board" can stand for.

It refuses, before anything is allocated, a busy board (MemAvailable below ``--min-available`` of MemTotal: what
it would capture is the other work's leftovers) and one whose OpenCL shows no device. Every child it starts is
supervised and gone when it returns; the whole capture is bounded by ``--timeout``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from mali_hil.emulator.board_memory import BoardMemory, nominal_memory
from mali_hil.errors import MaliHilError

FILL_SIZES = (128 << 20, 32 << 20)  # the probe's buffer sizes, each capped at max allocation
PROBE_MARGIN = 256 << 20  # bytes of MemAvailable the probe leaves the board's own processes
REFUSED_EXIT = 3  # the board refused the capture; the JSON's "refused" says why
_ICD_SUFFIX = 0x0920  # CL_PLATFORM_ICD_SUFFIX_KHR, which pyopencl does not know: asked through the loader itself
_BAD_SOURCE = "__kernel void k(__global int *b) { b[0] = mali_hil_undeclared; }"


class CaptureRefused(MaliHilError):
    """The board cannot be captured now (busy, or no OpenCL device); the message says why and what to do."""


def read_memory() -> BoardMemory:
    """This machine's memory facts, from /proc and /sys (what a job on it gets)."""
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        info[name] = int(rest.split()[0]) * 1024 if rest.split() else 0

    def sysctl(name: str, default: int = 0) -> int:
        try:
            return int(Path(f"/proc/sys/vm/{name}").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return default

    swaps = Path("/proc/swaps").read_text().splitlines()[1:] if Path("/proc/swaps").exists() else []
    zram = [line.split()[0] for line in swaps if "/zram" in line.split()[0]]
    zram_size, algorithms = 0, set()
    for device in zram:
        block = Path("/sys/block") / Path(device).name
        try:
            zram_size += int((block / "disksize").read_text())
            # the selected algorithm is the one in brackets: "lzo [lz4] zstd"
            chosen = re.search(r"\[(\w[\w-]*)\]", (block / "comp_algorithm").read_text())
            algorithms.add(chosen.group(1) if chosen else "unknown")
        except OSError:
            continue
    return BoardMemory(
        mem_total=info.get("MemTotal", 0), mem_available=info.get("MemAvailable", 0),
        swap_total=info.get("SwapTotal", 0), zram_size=zram_size, zram_algorithm=",".join(sorted(algorithms)),
        cma_total=info.get("CmaTotal", 0), min_free_kbytes=sysctl("min_free_kbytes"),
        overcommit_memory=sysctl("overcommit_memory"), overcommit_ratio=sysctl("overcommit_ratio", 50),
        oom_kill_allocating_task=sysctl("oom_kill_allocating_task"), panic_on_oom=sysctl("panic_on_oom"),
    )  # fmt: skip


def identity() -> dict[str, Any]:
    """Every profile field OpenCL answers, for the first device of the first platform (in this process)."""
    import ctypes

    import pyopencl as cl

    from mali_hil.emulator.info import query_opencl

    seen = query_opencl()
    if not seen["platforms"] or not seen["platforms"][0]["devices"]:
        raise CaptureRefused("OpenCL shows no device on this board (is the driver's ICD installed and loadable?)")
    platform, dev = cl.get_platforms()[0], cl.get_platforms()[0].get_devices()[0]
    loader = ctypes.CDLL("libOpenCL.so.1")
    suffix = ctypes.create_string_buffer(256)
    handle = ctypes.c_void_p(platform.int_ptr)
    got = loader.clGetPlatformInfo(handle, _ICD_SUFFIX, 256, suffix, None)
    program = cl.Program(cl.Context([dev]), _BAD_SOURCE)
    try:
        program.build()
        log = ""
    except cl.Error:
        log = program.get_build_info(dev, cl.program_build_info.LOG)
    named = re.search(r"^(.*?):\d+:\d+: error", log, re.MULTILINE)
    return {
        "platform": {k: v for k, v in seen["platforms"][0].items() if k != "devices"}
        | {"icd_suffix": suffix.value.decode() if got == 0 else ""},
        "device": seen["platforms"][0]["devices"][0] | {
            "max_constant_args": dev.max_constant_args, "image3d_max_size": dev.image3d_max_width,
            "image_max_buffer_size": dev.image_max_buffer_size, "image_max_array_size": dev.image_max_array_size,
        },
        "build_log_file": named.group(1).strip() if named else "",
    }  # fmt: skip


def capture(emulate: str | None, min_available: float, probe_budget: int | None, timeout: float) -> dict[str, Any]:
    from mali_hil.emulator.alloc_probe import probe
    from mali_hil.emulator.emulated_board import EmulatedBoard
    from mali_hil.emulator.launcher import RunStatus, run_on_board, run_with_budget
    from mali_hil.runtime.supervisor import ISOLATED

    started = time.monotonic()
    board = EmulatedBoard.from_spec(emulate) if emulate else None
    memory = (board.profile.memory or nominal_memory(board.profile.board_ram)) if board else read_memory()
    if memory.mem_available < min_available * memory.mem_total:
        raise CaptureRefused(
            f"the board is busy: MemAvailable is {memory.mem_available >> 20} MiB of {memory.mem_total >> 20} MiB "
            f"(below {min_available:.0%}); what a job gets would be measured after someone else's work. Stop it and "
            "capture at idle (or lower --min-available, knowing the figure then describes a busy board)"
        )
    argv = [sys.executable, *ISOLATED, "-m", "mali_hil.emulator.capture", "identity"]
    budget = board.ram_budget if board is not None else memory.mem_available - PROBE_MARGIN
    if probe_budget is not None:
        budget = min(budget, probe_budget)
    if budget <= 0:
        raise CaptureRefused(f"the board has {memory.mem_available >> 20} MiB available: nothing to probe with")
    run = run_on_board(board, argv, timeout=120, capture_output=True) if board is not None else \
        run_with_budget(argv, budget, timeout=120, capture_output=True)  # fmt: skip
    lines = [line for line in (run.stdout or "").splitlines() if line.startswith("{")]
    found = json.loads(lines[-1]) if lines else {}
    if run.status is not RunStatus.OK or "refused" in found:
        why = found.get("refused") or f"ended {run.status.value}: {(run.stderr or '').strip()[-600:]}"
        raise CaptureRefused(f"the OpenCL query on the board failed: {why}")
    left = timeout - (time.monotonic() - started)
    # buffers no larger than the driver's max allocation, so the fill measures memory, not the size rule
    sizes = tuple(str(min(size, found["device"]["max_alloc"])) for size in FILL_SIZES)
    result = probe(board, sizes, budget=None if board is not None else budget, timeout=max(10.0, left / 5),
                   views=False)  # fmt: skip
    return {"emulated": board.profile.spec if board is not None else None, "identity": found,
            "memory": memory.as_dict(), "probe": result.to_dict(), "probe_budget": budget,
            "seconds": time.monotonic() - started}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mali_hil.emulator.capture")
    parser.add_argument("step", nargs="?", choices=("identity",), help="(internal) one step, in a child process")
    parser.add_argument("--emulate", default=None, help="capture the emulated Mali PROFILE[:RAM] on this board")
    parser.add_argument("--min-available", type=float, default=0.5, help="refuse below this share of MemTotal")
    parser.add_argument("--probe-budget", type=int, default=None, help="at most this many bytes for the probe")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for the whole capture")
    args = parser.parse_args(argv)
    try:
        if args.step:
            try:
                document = identity()
            except CaptureRefused:
                raise
            except Exception as exc:  # the loader's own refusal (no platform) comes as pyopencl's error
                raise CaptureRefused(f"no usable OpenCL device: {type(exc).__name__}: {exc}") from None
        else:
            document = capture(args.emulate, args.min_available, args.probe_budget, args.timeout)
    except MaliHilError as exc:
        print(json.dumps({"refused": str(exc)}), flush=True)
        return REFUSED_EXIT
    print(json.dumps(document), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
