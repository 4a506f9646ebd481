"""Unified memory: a device buffer is the board's RAM from the moment it is allocated, as with a Mali driver.

PoCL reserves a buffer's address space and Linux commits each page at its first write, so before the layer
committed pages at allocation a buffer counted against the device cap at once but against the RAM only once
written: RAM peaks depended on when PoCL's queue got round to a write, and a load could fit the RAM only
because it had not written its buffers yet. These tests run real processes on emulated boards under the RAM
watchdog. Synchronous execution is PoCL's ``basic`` device (``POCL_DEVICES=basic``), which runs every command
inside its enqueue call; the default ``pthread`` device runs them later on its own threads.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mali_hil.emulator.emulated_board import EmulatedBoard
from mali_hil.emulator.launcher import BoardRun, RunStatus, run_on_board
from mali_hil.emulator.profile import available_profiles
from mali_hil.runtime.verdict import OomEvidence

MiB = 1 << 20
# Put before every job script (_run): the process's anonymous RAM, as the RAM figures count it.
RSS_ANON = textwrap.dedent("""
    def rss():
        with open("/proc/self/status") as status:
            return next(int(l.split()[1]) << 10 for l in status if l.startswith("RssAnon:"))
""")
SPIN_ITERATIONS = 150_000_000  # ~0.5 s of one kernel on one core here: the fill queued behind it waits that long

# Allocates a device buffer, queues a write to it behind a busy kernel, then touches as much host memory while
# the write may still be queued. Reports the anonymous RAM that appeared meanwhile (the "window"): with pages
# committed at allocation it is both buffers whatever the queue does.
QUEUED_WRITE = textwrap.dedent("""
    import json, sys, time
    import numpy as np, pyopencl as cl
    size, spins = int(sys.argv[1]), int(sys.argv[2])
    ctx = cl.Context(cl.get_platforms()[0].get_devices())
    queue = cl.CommandQueue(ctx)
    spin = cl.Program(ctx, "kernel void spin(global uint *o, uint n) { uint x = o[0]; "
                      "for (uint i = 0; i < n; i++) x = x * 1103515245u + 12345u; o[0] = x; }").build().spin
    out = cl.Buffer(ctx, cl.mem_flags.READ_WRITE, 64)
    spin(queue, (1,), None, out, np.uint32(1)).wait()  # compiled and run once: no compiler memory in the window
    before = rss()
    device = cl.Buffer(ctx, cl.mem_flags.READ_WRITE, size)
    spin(queue, (1,), None, out, np.uint32(spins))
    cl.enqueue_fill_buffer(queue, device, np.uint8(1), 0, size)
    host = np.ones(size, np.uint8)
    window = rss() - before
    time.sleep(0.2)  # the watchdog samples at least every 20 ms
    del host
    queue.finish()
    print(json.dumps({"window": window}), flush=True)
""")

# Holds `device` bytes of never-written device buffers (32 MiB each, under every profile's max alloc), says so,
# then touches `host` bytes of host memory and holds them.
DEVICE_THEN_HOST = textwrap.dedent("""
    import json, sys, time
    import numpy as np, pyopencl as cl
    from mali_hil.runtime.layer_stats import read_layer_stats
    device, host, piece = int(sys.argv[1]), int(sys.argv[2]), 32 << 20
    ctx = cl.Context(cl.get_platforms()[0].get_devices())
    held = [cl.Buffer(ctx, cl.mem_flags.READ_WRITE, piece) for _ in range(device // piece)]
    stats = read_layer_stats()
    print(json.dumps({"live": stats.live_bytes, "cap": stats.cap_bytes, "failed": stats.failed_allocations}),
          flush=True)
    more = np.ones(host, np.uint8)
    time.sleep(1.0)
    print("survived", flush=True)
""")


# Rounds of buffers of 64 KiB-30 MiB, each round released before the next, and buffers made with each host-pointer
# flag. Reports RssAnon after each round's release (from before the first), what the layer answers for the flags
# and host pointer it was asked for, and whether COPY_HOST_PTR's data arrived.
ROUNDS_RELEASED = textwrap.dedent("""
    import ctypes, json
    import numpy as np, pyopencl as cl
    mf = cl.mem_flags
    CL_MEM_HOST_PTR = 0x1103  # pyopencl will not ask for it: ask through the ICD loader pyopencl uses
    loader = next((line.split()[-1] for line in open("/proc/self/maps") if "libOpenCL" in line
                   and "pyopencl" in line), "libOpenCL.so.1")
    def host_ptr(buf):
        out = ctypes.c_void_p(1)
        ctypes.CDLL(loader).clGetMemObjectInfo(ctypes.c_void_p(buf.int_ptr), CL_MEM_HOST_PTR, ctypes.sizeof(out),
                                               ctypes.byref(out), None)
        return out.value
    ctx = cl.Context(cl.get_platforms()[0].get_devices())
    queue = cl.CommandQueue(ctx)
    data = np.arange(3 << 20, dtype=np.uint8)
    before, left = rss(), []
    for _ in range(3):
        held = [cl.Buffer(ctx, mf.READ_WRITE, mib << 20) for mib in (3, 5, 9, 17, 30, 7, 2, 12)]
        held += [cl.Buffer(ctx, mf.READ_WRITE, 64 << 10), cl.Buffer(ctx, mf.HOST_NO_ACCESS, 4 << 20)]
        for buf in held:
            buf.release()
        queue.finish()
        left.append(rss() - before)
    asked = {"copy": mf.READ_ONLY | mf.COPY_HOST_PTR, "alloc": mf.READ_WRITE | mf.ALLOC_HOST_PTR,
             "alloc-copy": mf.READ_WRITE | mf.ALLOC_HOST_PTR | mf.COPY_HOST_PTR}
    answers, arrived = {}, {}
    for name, flags in asked.items():
        buf = cl.Buffer(ctx, flags, data.nbytes, hostbuf=data if flags & mf.COPY_HOST_PTR else None)
        answers[name] = [buf.get_info(cl.mem_info.FLAGS), flags, host_ptr(buf)]
        if flags & mf.COPY_HOST_PTR:
            back = np.empty_like(data)
            cl.enqueue_copy(queue, back, buf)
            arrived[name] = bool((back == data).all())
        buf.release()
    print(json.dumps({"left": left, "answers": answers, "arrived": arrived}), flush=True)
""")


# Loads a checkpoint with the mmap loader `rounds` times, as a warm worker does, and reports each load's device peak
# (the layer's counter) and its RAM growth (RssAnon, sampled every 0.5 ms). mmap frees each (source, target) pair's
# staging right after a clFinish and allocates the next pair's at once.
LOADS_BACK_TO_BACK = textwrap.dedent("""
    import gc, json, sys, threading, time
    from tinygrad import Device
    from mali_hil.runtime.layer_stats import read_layer_stats, reset_layer_stats
    from mali_hil.harness.loaders import LoadOptions, get_loader
    checkpoint, rounds, loader = sys.argv[1], int(sys.argv[2]), get_loader("mmap")
    figures = []
    for _ in range(rounds):
        gc.collect()
        base, peak, done = rss(), [0], threading.Event()
        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss())
                time.sleep(0.0005)
        sampler = threading.Thread(target=sample)
        sampler.start()
        tensors = loader.load(checkpoint, "CL", LoadOptions())
        Device["CL"].synchronize()
        done.set()
        sampler.join()
        figures.append([read_layer_stats().peak_bytes, max(peak[0], rss()) - base])
        tensors.clear()
        gc.collect()
        Device["CL"].allocator.free_cache()
        reset_layer_stats()
    print(json.dumps({"figures": figures}), flush=True)
""")


def _run(tmp_path: Path, spec: str, script: str, *args: int | str, env: dict[str, str] | None = None) -> BoardRun:
    path = tmp_path / "job.py"
    path.write_text(RSS_ANON + script, encoding="utf-8")
    argv = [sys.executable, str(path), *map(str, args)]
    # pyopencl's own program cache breaks under PoCL's basic device; PoCL's kernel cache stays on
    full_env = {"PYOPENCL_NO_CACHE": "1", **(env or {})}
    return run_on_board(EmulatedBoard.from_spec(spec), argv, env=full_env, capture_output=True, timeout=120)


def _window(run: BoardRun) -> int:
    assert run.status is RunStatus.OK, f"{run.status}: {run.stderr}"
    lines = [line for line in (run.stdout or "").splitlines() if line.startswith("{")]
    assert lines, run.stderr
    return int(json.loads(lines[-1])["window"])


@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size_mib=st.sampled_from([192, 256]))  # large enough that the window, not the compiler, is the peak
def test_peak_is_the_same_with_synchronous_and_asynchronous_execution(tmp_path: Path, size_mib: int) -> None:
    """Catches: device pages committed at their first write (the asynchronous run's window holds only the host
    array, since the fill is still queued behind the busy kernel), so the peak depends on queue timing."""
    size = size_mib * MiB
    runs = {mode: _run(tmp_path, "mali-g610:2GiB", QUEUED_WRITE, size, SPIN_ITERATIONS, env={"POCL_DEVICES": mode})
            for mode in ("pthread", "basic")}  # fmt: skip
    windows = {mode: _window(run) for mode, run in runs.items()}
    for mode, window in windows.items():
        assert window >= 2 * size - 8 * MiB, (
            f"{mode}: {window / MiB:.0f} MiB of RAM appeared for a {size_mib} MiB device buffer and as much host"
            " memory: the device buffer was not RAM from its allocation"
        )
    peaks = {mode: run.peak_unified_bytes for mode, run in runs.items()}
    assert abs(peaks["pthread"] - peaks["basic"]) <= size // 2, f"peaks differ with queue timing: {peaks}"


@pytest.mark.parametrize("key", available_profiles())
def test_a_load_that_fits_the_device_cap_but_not_the_ram_is_oom_killed(tmp_path: Path, key: str) -> None:
    """Catches: unwritten device buffers left out of the RAM budget (the job fits because it has not written
    them yet) and a layer that fails the allocation or kills at the cap although the device part fits it."""
    spec = f"{key}:512MiB"
    board = EmulatedBoard.from_spec(spec)
    device = (board.profile.global_mem * 3 // 4) // (32 * MiB) * (32 * MiB)
    host = board.ram_budget - device // 2  # device + host is 1.25-1.5x the board; host alone fits it
    run = _run(tmp_path, spec, DEVICE_THEN_HOST, device, host)
    reports = [json.loads(line) for line in (run.stdout or "").splitlines() if line.startswith("{")]
    assert reports, f"the device buffers alone did not fit: {run.status} {run.stderr}"
    assert reports[0]["live"] == device <= reports[0]["cap"] and reports[0]["failed"] == 0, reports[0]
    assert run.status is RunStatus.OOM_KILLED, f"{run.status}: peak {run.peak_unified_bytes} B; {run.stderr}"
    assert run.end.evidence is OomEvidence.ENFORCER, run.end.describe_oom()
    assert "survived" not in (run.stdout or "")


def test_a_released_buffer_gives_its_ram_back_and_keeps_the_flags_it_was_asked_for(tmp_path: Path) -> None:
    """A driver returns a freed buffer's pages to the kernel. Catches: buffers carved from the malloc heap, where
    glibc's mmap threshold, raised by the first round's frees, keeps every later round's buffers resident after
    release (RssAnon stayed ~85 MiB up from round 2 before the layer owned buffer storage); storage unmapped
    before the buffer dies, or never; the layer's USE_HOST_PTR showing through clGetMemObjectInfo; a
    COPY_HOST_PTR buffer whose data did not arrive."""
    run = _run(tmp_path, "mali-g610:2GiB", ROUNDS_RELEASED)
    assert run.status is RunStatus.OK, f"{run.status}: {run.stderr}"
    report = json.loads([line for line in (run.stdout or "").splitlines() if line.startswith("{")][-1])
    assert max(report["left"]) <= 4 * MiB, f"RAM left after each round's release: {report['left']} bytes"
    for name, (flags, asked, host_ptr) in report["answers"].items():
        assert (flags, host_ptr) == (asked, None), f"{name}: flags {flags:#x} (asked {asked:#x}), host_ptr {host_ptr}"
    assert report["arrived"] == {"copy": True, "alloc-copy": True}, report["arrived"]


def test_a_buffer_released_after_clfinish_is_gone_before_the_next_allocation(tmp_path: Path) -> None:
    """A driver frees, at its release, a buffer no command uses any more; PoCL drops a finished command's reference
    on its own thread after clFinish has returned, which busy cores delay. Catches: the layer letting that late
    death race the program's next allocation, so that the device counter or the RAM held a freed staging pair and
    the next one together: before the layer waited for it, two series of 60 such loads beside four busy processes
    had 2 loads 16-18 MiB over the rest in RAM and 3 loads 17 MiB over in the counter, and with two test processes
    mmap's RAM growth past the default chunk came out over its bound in about 1 run of 8."""
    from mali_hil.harness.checkpoints.cache import cache_key, cached_checkpoint
    from tests.properties import past_chunks

    key = cache_key("past_every_chunk", {}, sources=[Path(past_chunks.__file__)])  # the property suite's own
    checkpoint = cached_checkpoint(key, "past-every-chunk.safetensors", past_chunks.write, tmp_path)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(4)]
    try:
        run = _run(tmp_path, "mali-g610:3GiB", LOADS_BACK_TO_BACK, str(checkpoint), 40)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    assert run.status is RunStatus.OK, f"{run.status}: {run.stderr}"
    figures = json.loads([line for line in (run.stdout or "").splitlines() if line.startswith("{")][-1])["figures"]
    device_peak = figures[1][0]  # the first load also holds its kernels' compilation
    overlaps = [(i, peak, growth) for i, (peak, growth) in enumerate(figures[1:], 1)
                if peak != device_peak or growth > device_peak + 4 * MiB]  # fmt: skip
    assert not overlaps, f"loads whose device peak or RAM growth held two stagings (of {device_peak}): {overlaps}"
