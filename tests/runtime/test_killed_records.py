"""A process ended from outside (RAM watchdog, timeout) still leaves its device counters in its record.

A SIGKILL runs no exit handler, so the layer's JSON stats file never appears for such a process; the layer keeps
a snapshot of its counters current instead (``<stats file>.live``), which the supervisor reads.
"""

from __future__ import annotations

import signal
import sys
import textwrap

from mali_hil.emulator.emulated_board import EmulatedBoard
from mali_hil.emulator.launcher import RunStatus, run_on_board
from mali_hil.runtime.verdict import OomEvidence

MiB = 1 << 20
PY = sys.executable

# Two written 64 MiB device buffers, one freed; then host memory until something ends the process.
DEVICE_THEN_HOST = textwrap.dedent("""
    import sys, time
    import numpy as np, pyopencl as cl
    ctx = cl.Context(cl.get_platforms()[0].get_devices())
    queue = cl.CommandQueue(ctx)
    bufs = [cl.Buffer(ctx, cl.mem_flags.READ_WRITE, 64 << 20) for _ in range(2)]
    for buf in bufs:
        cl.enqueue_fill_buffer(queue, buf, np.uint8(1), 0, 64 << 20).wait()
    bufs.pop().release()
    queue.finish()
    print('device ready', flush=True)
    if sys.argv[1] == 'host':
        chunks = [b'\\x01' * (16 << 20) for _ in range(256)]
    time.sleep(60)
""")


def test_a_job_killed_for_ram_carries_its_device_counters() -> None:
    board = EmulatedBoard.from_spec("mali-g610:2GiB", ram_budget=512 * MiB)
    run = run_on_board(board, [PY, "-c", DEVICE_THEN_HOST, "host"], capture_output=True, timeout=120)
    assert run.status is RunStatus.OOM_KILLED, run.stderr
    assert run.end.evidence is OomEvidence.ENFORCER
    assert "device ready" in (run.stdout or "")
    device = run.to_dict()["device"]
    assert device is not None, "the record of a RAM-killed job has no device figures"
    assert device["peak_bytes"] == 128 * MiB
    assert device["live_bytes"] == 64 * MiB  # the release was counted too
    assert (device["allocations"], device["frees"]) == (2, 1)
    assert device["cap_bytes"] == board.profile.global_mem


def test_a_timed_out_job_carries_its_device_counters_and_is_no_oom_kill() -> None:
    # alloc-error profile with a refused allocation: a SIGKILL from the timeout must not read as the layer's kill
    board = EmulatedBoard.from_spec("mali-g52:2GiB", ram_budget=1 << 30)
    refuse_then_wait = DEVICE_THEN_HOST.replace(
        "print('device ready', flush=True)",
        "try:\n    cl.Buffer(ctx, cl.mem_flags.READ_WRITE, 4 << 30)\nexcept cl.Error:\n    pass\n"
        "print('device ready', flush=True)",
    )
    run = run_on_board(
        board, [PY, "-c", refuse_then_wait, "wait"], capture_output=True, timeout=15
    )  # time to reach the sleep on a busy CI
    assert run.status is RunStatus.TIMEOUT, run.stderr
    assert run.returncode == -signal.SIGKILL
    assert run.device is not None and run.device.peak_bytes == 128 * MiB
    assert run.device.failed_allocations == 1
