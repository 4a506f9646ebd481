"""An allocation probe in the style of the OpenCL CTS ``allocations`` test, run on a board through real OpenCL calls.

``python -m mali_hil.emulator.alloc_probe STEP [SIZE]`` runs one step in the board's process and prints JSON; a
step that may end in an OOM kill (filling memory) runs in a process of its own, so the kill is the result, not the
end of the probe. :func:`probe` runs every step on a board and gathers what happened:

- ``max_alloc``: one buffer of the device's max allocation, written at both ends by a kernel and read back;
- ``over_max_alloc``: one byte more, which the profile's driver refuses with its code (or accepts);
- ``fill``: buffers of SIZE, each written, until one is refused or the process is killed;
- ``views``: sub-buffers of a buffer, which add no bytes, and images, small and above max allocation.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from mali_hil.emulator.profile import CL_ERRORS, OomFailure, OomTrigger, parse_size

if TYPE_CHECKING:
    from mali_hil.emulator.emulated_board import EmulatedBoard

_TIMEOUT = 600.0
_TOUCH = "__kernel void touch(__global uchar *b, ulong last) { b[0] = 1; b[last] = 2; }"
DEFAULT_FILL_SIZES = ("128MiB", "32MiB")


@dataclass(frozen=True)
class FillResult:
    size: int
    buffers: int  # how many were created and written before the end
    ending: str  # "refused -4", "oom-killed", "limit" (stopped at 4096 buffers), or how the process ended
    at: str = ""  # where a refusal came: "create" (clCreateBuffer) or "enqueue" (the first use)
    peak: int = 0  # the step's unified RAM peak (host memory and buffers) on the board


@dataclass(frozen=True)
class ProbeResult:
    board: str
    max_alloc: int
    global_mem: int
    max_alloc_used: int | str  # 0 when created, written and read back; else the OpenCL code, or the process's end
    over_max_alloc: int  # 0 when accepted, else the OpenCL code
    fills: tuple[FillResult, ...]
    views: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _step(name: str, size: int | None) -> dict[str, Any]:
    """One step, in this (the board's) process."""
    import numpy as np
    import pyopencl as cl

    from mali_hil.runtime.layer_stats import read_layer_stats

    ctx = cl.Context([cl.get_platforms()[0].get_devices()[0]])
    dev, queue = ctx.devices[0], cl.CommandQueue(ctx)
    touch = cl.Kernel(cl.Program(ctx, _TOUCH).build(), "touch")

    def used(nbytes: int) -> int:
        try:
            buf = cl.Buffer(ctx, cl.mem_flags.READ_WRITE, nbytes)
        except cl.Error as exc:
            failed_at.append("create")
            return exc.code
        failed_at.append("enqueue")
        try:
            touch.set_args(buf, np.uint64(nbytes - 1))
            cl.enqueue_nd_range_kernel(queue, touch, (1,), None)
            ends = np.zeros(1, np.uint8), np.zeros(1, np.uint8)
            cl.enqueue_copy(queue, ends[0], buf, src_offset=0)
            cl.enqueue_copy(queue, ends[1], buf, src_offset=nbytes - 1)
            queue.finish()
            held.append(buf)
            failed_at.pop()
            return 0 if (ends[0][0], ends[1][0]) == (1, 2) else -9999  # -9999: written, but read back wrong
        except cl.Error as exc:
            return exc.code

    held: list[Any] = []
    failed_at: list[str] = []
    info = {"max_alloc": dev.max_mem_alloc_size, "global_mem": dev.global_mem_size}
    if name == "max_alloc":
        return {**info, "code": used(dev.max_mem_alloc_size)}
    if name == "over_max_alloc":
        try:
            cl.Buffer(ctx, cl.mem_flags.READ_WRITE, dev.max_mem_alloc_size + 1).release()
            return {**info, "code": 0}
        except cl.Error as exc:
            return {**info, "code": exc.code}
    if name == "fill":
        assert size is not None
        code = 0
        while len(held) < 4096 and (code := used(size)) == 0:
            print(json.dumps({"buffers": len(held)}), flush=True)  # the last line tells, if the process is killed
        return {**info, "buffers": len(held), "code": code, "at": failed_at[-1] if code else ""}
    parent = cl.Buffer(ctx, cl.mem_flags.READ_WRITE, 1 << 20)
    before = read_layer_stats().live_bytes
    align = dev.mem_base_addr_align // 8
    subs = [parent.get_sub_region(i * align, align) for i in range(4)]
    after_subs = read_layer_stats().live_bytes
    rgba = cl.ImageFormat(cl.channel_order.RGBA, cl.channel_type.FLOAT)
    codes = {}
    side = int((dev.max_mem_alloc_size // 16) ** 0.5) + 64
    for label, shape in (("small_image", (64, 64)), ("image_above_max_alloc", (side, side))):
        try:
            cl.create_image(ctx, cl.mem_flags.READ_WRITE, rgba, shape).release()
            codes[label] = 0
        except cl.Error as exc:
            codes[label] = exc.code
    del subs
    return {**info, "sub_buffers_add": after_subs - before, **codes}


def probe(board: EmulatedBoard | None, fill_sizes: tuple[str, ...] = DEFAULT_FILL_SIZES, *,
          budget: int | None = None, timeout: float = _TIMEOUT, views: bool = True) -> ProbeResult:  # fmt: skip
    """Every step on ``board``, each in a process of its own; ``board=None``: on this machine's own OpenCL device
    (a real board's driver), each step under ``budget`` bytes of RAM so that the board survives the fill.
    ``views=False`` leaves out the sub-buffer and image step (a capture needs only what memory does)."""
    def step(name: str, size: int | None = None) -> dict[str, Any]:
        return _on_board(board, name, size, budget, timeout)

    first = step("max_alloc")
    over = step("over_max_alloc")
    fills = []
    for text in fill_sizes:
        size = parse_size(text)
        got = step("fill", size)
        ending = f"refused {got['code']}" if got.get("code") else got.get("ending", "limit")
        fills.append(FillResult(size, got.get("buffers", 0), ending, got.get("at", ""), got.get("peak", 0)))
    seen = step("views") if views else {}
    name = board.profile.spec if board is not None else "this board's driver"
    return ProbeResult(name, first.get("max_alloc", 0), first.get("global_mem", 0),
                       first.get("code", first.get("ending", "")), over.get("code", 0), tuple(fills),
                       {k: v for k, v in seen.items() if k not in ("max_alloc", "global_mem", "peak")})  # fmt: skip


CL_INVALID_IMAGE_SIZE = -40


def check(board: EmulatedBoard, result: ProbeResult) -> list[str]:
    """What in ``result`` is not what ``board``'s profile says its driver does (empty: all of it is)."""
    profile, problems = board.profile, []
    if result.max_alloc_used != 0:
        problems.append(f"the max-allocation buffer failed ({result.max_alloc_used}; a backend refusal if PoCL's "
                        "own limit is lower: see emulator info)")  # fmt: skip
    over = 0 if profile.over_max_alloc == "accept" else CL_ERRORS[profile.over_max_alloc]
    if result.over_max_alloc != over:
        problems.append(f"max allocation + 1 gave {result.over_max_alloc}, the profile says {over}")
    for fill in result.fills:
        if profile.oom_trigger is OomTrigger.BOTH and profile.oom_failure is not OomFailure.OOM_KILL:
            want = (profile.global_mem // fill.size, f"refused {CL_ERRORS[profile.oom_error]}")
            if (fill.buffers, fill.ending) != want:
                problems.append(f"{fill.size}-byte buffers: {fill.buffers} then {fill.ending}, want {want[0]} then "
                                f"{want[1]} (the driver's counter at global memory)")  # fmt: skip
        elif fill.ending != "oom-killed" or fill.buffers * fill.size > board.ram_budget:
            problems.append(f"{fill.size}-byte buffers: {fill.buffers} then {fill.ending}, want an OOM kill within "
                            f"the board's {board.ram_budget} bytes")  # fmt: skip
    image_code = 0 if profile.over_max_alloc == "accept" else CL_INVALID_IMAGE_SIZE
    want_views = {"sub_buffers_add": 0, "small_image": 0, "image_above_max_alloc": image_code}
    if result.views != want_views:
        problems.append(f"views {result.views}, want {want_views}")
    return problems


def _on_board(board: EmulatedBoard | None, step: str, size: int | None, budget: int | None,
              timeout: float) -> dict[str, Any]:  # fmt: skip
    """The step's last JSON line, its RAM peak, and how its process ended when that was not by itself."""
    from mali_hil.emulator.launcher import RunStatus, run_on_board, run_with_budget
    from mali_hil.runtime.supervisor import ISOLATED

    argv = [sys.executable, *ISOLATED, "-m", "mali_hil.emulator.alloc_probe", step, *([str(size)] if size else [])]
    if board is not None:
        run = run_on_board(board, argv, timeout=timeout, capture_output=True)
    else:
        assert budget is not None, "a probe of the board's own driver runs under a budget"
        run = run_with_budget(argv, budget, board_name="board", timeout=timeout, capture_output=True)
    lines = [line for line in (run.stdout or "").splitlines() if line.startswith("{")]
    got: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    got["peak"] = run.peak_unified_bytes
    if run.status is not RunStatus.OK:
        got["ending"] = run.status.value if run.returncode >= 0 or run.status is RunStatus.OOM_KILLED else \
            f"{run.status.value} (signal {-run.returncode})"  # fmt: skip
    return got


def main(argv: list[str]) -> int:
    print(json.dumps(_step(argv[0], int(argv[1]) if len(argv) > 1 else None)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
