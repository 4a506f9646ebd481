"""The layer's memory cap: live bytes of all memory objects never pass the profile's global memory, and past it
the process fails the way the profiled driver does. Real PoCL, real ICD loaders, one fresh process per scenario.
"""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from mali_hil.emulator.emulated_board import CONFIG_ENV, write_layer_config
from mali_hil.emulator.profile import CL_ERRORS, OomTrigger, Profile, available_profiles, load_profile
from mali_hil.errors import BackendError, BudgetError
from mali_hil.runtime.layer_stats import LayerStats, read_stats_file
from tests.emulator._subprocess import PYOPENCL, run_ok, run_on_board, run_snippet

MiB = 1 << 20
ALLOC_ERROR = "mali-g52:64MiB"  # alloc-error, CL_MEM_OBJECT_ALLOCATION_FAILURE, max alloc = a quarter of global
ENQUEUE_ERROR = "mali-t860:64MiB"  # enqueue-error, CL_OUT_OF_RESOURCES, accepts buffers above max alloc
OOM_KILL = "mali-g610:64MiB"  # oom-kill triggered by RAM only (libmali), max alloc = global
SIGKILL_EXIT = -9


def on_board(spec: str, code: str, stats_file: Path | None = None, env: dict[str, str] | None = None):
    """Run a pyopencl snippet (with the PYOPENCL helpers) on a board; its last emitted value."""
    return run_ok(spec, PYOPENCL + textwrap.dedent(code), stats_file, env)


def test_allocations_fill_the_cap_exactly_and_freeing_gives_it_back() -> None:
    profile = load_profile(ALLOC_ERROR)
    got = on_board(
        ALLOC_ERROR,
        f"""
        cap, chunk = {profile.global_mem}, 7 * MiB
        bufs = []
        while live() + chunk <= cap:
            bufs.append(create(chunk))
        bufs.append(create(cap - live()))
        at_cap, over = live(), create_code(1)
        bufs.pop(0).release()
        after_free = live()
        bufs.append(create(chunk))
        over_again = create_code(1)
        emit({{"n": len(bufs), "at_cap": at_cap, "over": over, "after_free": after_free,
              "over_again": over_again, "stats": read_layer_stats().to_dict()}})
        """,
    )
    code = CL_ERRORS[profile.oom_error]
    assert got["at_cap"] == profile.global_mem
    assert got["over"] == code and got["over_again"] == code
    assert profile.global_mem % (7 * MiB) != 0  # so the last buffer is an odd size
    assert got["after_free"] == profile.global_mem - 7 * MiB
    stats = got["stats"]
    assert stats["live_bytes"] == stats["peak_bytes"] == profile.global_mem
    # pyopencl retries a CL_MEM_OBJECT_ALLOCATION_FAILURE once after a garbage collection: 2 refused calls each
    assert stats["failed_allocations"] == 2 * 2 and stats["backend_refusals"] == 0
    assert stats["last_refused_bytes"] == 1  # the "needed" figure a device-oom result reports
    assert (stats["allocations"], stats["frees"], stats["live_objects"]) == (got["n"] + 1, 1, got["n"])


TINYGRAD_FILL = """
import gc
import numpy as np
from tinygrad import Tensor
from mali_hil.runtime.layer_stats import read_layer_stats
MiB = 1 << 20
def upload(n):
    return Tensor(np.zeros(n * MiB, np.uint8), device="CL").realize()
held, message = [], ""
try:
    while True:
        held.append(upload(8))
except MemoryError as exc:
    message = str(exc)
full = read_layer_stats()
del held[:4]
gc.collect()  # tinygrad's buffers can sit in reference cycles; free them now, not at some later collection
after_del = read_layer_stats()
big = upload(12)
after_big = read_layer_stats()
emit({"held": len(held) + 4, "message": message, "full": full.to_dict(), "after_del": after_del.to_dict(),
      "after_big": after_big.to_dict()})
"""


@pytest.mark.parametrize("lru", ["0", "1"])
def test_tinygrad_gets_memory_error_and_its_lru_retry_works(lru: str) -> None:
    profile = load_profile(ALLOC_ERROR)
    got = run_ok(ALLOC_ERROR, TINYGRAD_FILL, env={"LRU": lru})
    held = profile.global_mem // (8 * MiB)
    assert got["held"] == held
    assert got["message"].startswith("Allocation of")
    assert got["full"]["live_bytes"] == held * 8 * MiB <= profile.global_mem
    assert got["full"]["failed_allocations"] == 2  # tinygrad frees its cache and retries once
    if lru == "1":  # freed tensors stay cached on the device until an allocation fails
        assert got["after_del"]["live_bytes"] == held * 8 * MiB
        assert got["after_big"]["failed_allocations"] == 3
    else:
        assert got["after_del"]["live_bytes"] == (held - 4) * 8 * MiB
        assert got["after_big"]["failed_allocations"] == 2
    assert got["after_big"]["live_bytes"] == (held - 4) * 8 * MiB + 12 * MiB


def test_sub_buffers_add_nothing_and_keep_their_parent() -> None:
    got = on_board(
        ALLOC_ERROR,
        """
        parent = create(8 * MiB)
        sub = parent.get_sub_region(0, 4 * MiB)
        with_sub, objects = live(), read_layer_stats().live_objects
        parent.release()
        parent_released = live()
        sub.release()
        emit([with_sub, objects, parent_released, live()])
        """,
    )
    assert got == [8 * MiB, 1, 8 * MiB, 0]


def test_retained_buffer_keeps_its_bytes_until_the_last_release() -> None:
    got = on_board(
        ALLOC_ERROR,
        """
        buf = create(4 * MiB)
        twin = cl.Buffer.from_int_ptr(buf.int_ptr, retain=True)  # clRetainMemObject
        buf.release()
        one_left = live()
        twin.release()
        emit([one_left, live(), read_layer_stats().frees])
        """,
    )
    assert got == [4 * MiB, 0, 1]


def test_buffer_released_while_a_queued_command_uses_it() -> None:
    got = on_board(
        ALLOC_ERROR,
        """
        import time
        import numpy as np
        host = np.ones(MiB, np.float32)
        buf = create(4 * MiB)
        gate = cl.UserEvent(ctx)
        copy = cl.enqueue_copy(queue, buf, host, is_blocking=False, wait_for=[gate])
        buf.release()
        while_queued = live()
        gate.set_status(cl.command_execution_status.COMPLETE)
        queue.finish()
        after_finish = live()
        # PoCL drops a finished command's buffers just after clFinish returns: counts must not lag behind it
        kernel = cl.Kernel(cl.Program(ctx, "__kernel void k(__global float *a) { a[get_global_id(0)] += 1; }")
                           .build(), "k")
        lagging, start = 0, time.monotonic()
        for _ in range(200):
            buf = create(host.nbytes)
            gate = cl.UserEvent(ctx)
            copy = cl.enqueue_copy(queue, buf, host, is_blocking=False, wait_for=[gate])
            kernel.set_arg(0, buf)
            run = cl.enqueue_nd_range_kernel(queue, kernel, host.shape, None)
            buf.release()
            gate.set_status(cl.command_execution_status.COMPLETE)
            queue.finish()
            lagging += live() != 0
        emit([while_queued, after_finish, lagging, time.monotonic() - start])
        """,
    )
    assert got[:3] == [4 * MiB, 0, 0]
    assert got[3] < 10  # each read waits for a PoCL thread's microseconds, not for the 1 s give-up bound


CL_INVALID_IMAGE_SIZE = -40


def test_images_count_their_pixels_and_images_of_buffers_nothing() -> None:
    profile = load_profile(ALLOC_ERROR)
    got = on_board(
        ALLOC_ERROR,
        """
        rw = cl.mem_flags.READ_WRITE
        rgba_f32 = cl.ImageFormat(cl.channel_order.RGBA, cl.channel_type.FLOAT)
        r_u8 = cl.ImageFormat(cl.channel_order.R, cl.channel_type.UNSIGNED_INT8)
        steps = []
        img2d = cl.create_image(ctx, rw, rgba_f32, shape=(64, 32)); steps.append(live())
        img3d = cl.create_image(ctx, rw, r_u8, shape=(16, 8, 4)); steps.append(live())
        array = cl.create_image(ctx, rw, rgba_f32, shape=(8, 4, 3), is_array=True); steps.append(live())
        buf = create(1024 * 16); steps.append(live())
        of_buf = cl.create_image(ctx, rw, rgba_f32, shape=(1024,), buffer=buf); steps.append(live())
        objects = read_layer_stats().live_objects
        def image_code(side):
            try:
                held.append(cl.create_image(ctx, rw, rgba_f32, shape=(side, side)))
                return 0
            except cl.Error as exc:
                return exc.code
        held = []
        above_max_alloc = image_code(4096)
        side = int((ctx.devices[0].max_mem_alloc_size // 16) ** 0.5)  # just under max allocation
        while len(held) < 64 and (at_cap := image_code(side)) == 0:
            pass
        for obj in (img2d, img3d, array, of_buf, buf, *held):
            obj.release()
        emit({"steps": steps, "objects": objects, "above_max_alloc": above_max_alloc, "at_cap": at_cap,
              "end": live()})
        """,
    )
    sizes = [64 * 32 * 16, 16 * 8 * 4, 8 * 4 * 3 * 16, 1024 * 16, 0]
    assert got["steps"] == [sum(sizes[: i + 1]) for i in range(len(sizes))]
    assert got["objects"] == 4
    assert got["above_max_alloc"] == CL_INVALID_IMAGE_SIZE  # as a buffer of the size is refused
    assert got["at_cap"] == CL_ERRORS[profile.oom_error]  # images fill the cap as buffers do
    assert got["end"] == 0


def test_peak_and_reset() -> None:
    got = on_board(
        ALLOC_ERROR,
        """
        a, b = create(10 * MiB), create(10 * MiB)
        a.release()
        c = create(5 * MiB)
        before = read_layer_stats().to_dict()
        reset_layer_stats()
        after_reset = read_layer_stats().to_dict()
        d = create(MiB)
        d.release()
        emit([before, after_reset, read_layer_stats().to_dict()])
        """,
    )
    before, after_reset, later = (LayerStats(**s) for s in got)
    assert (before.peak_bytes, before.live_bytes, before.allocations, before.frees) == (20 * MiB, 15 * MiB, 3, 1)
    assert before.generation == 0 and after_reset.generation == 1
    assert (after_reset.peak_bytes, after_reset.live_bytes, after_reset.live_objects) == (15 * MiB, 15 * MiB, 2)
    assert (after_reset.allocations, after_reset.frees, after_reset.failed_allocations) == (0, 0, 0)
    assert after_reset.last_refused_bytes == 0
    assert (later.peak_bytes, later.live_bytes, later.allocations, later.frees) == (16 * MiB, 15 * MiB, 1, 1)


def test_stats_file_is_written_at_exit(stats_file: Path) -> None:
    profile = load_profile(ALLOC_ERROR)
    in_process = on_board(
        ALLOC_ERROR,
        f"""
        a, b = create(10 * MiB), create(5 * MiB)
        refused = create_code({profile.max_alloc} + 1)
        a.release()
        emit(read_layer_stats().to_dict())
        b.release()
        """,
        stats_file,
    )
    at_exit = read_stats_file(stats_file)
    expected = {**in_process, "live_bytes": 0, "live_objects": 0, "frees": 2}
    assert at_exit.to_dict() == expected
    assert (at_exit.peak_bytes, at_exit.allocations, at_exit.failed_allocations) == (15 * MiB, 2, 1)
    assert at_exit.cap_bytes == profile.global_mem
    assert at_exit.last_refused_bytes == profile.max_alloc + 1
    assert not list(stats_file.parent.glob("*.tmp"))


def test_enqueue_error_fails_commands_while_memory_is_overcommitted() -> None:
    profile = load_profile(ENQUEUE_ERROR)
    chunk = profile.max_alloc - MiB
    fit = profile.global_mem // chunk
    got = on_board(
        ENQUEUE_ERROR,
        f"""
        import numpy as np
        host = np.ones(MiB // 4, np.float32)
        kernel = cl.Kernel(cl.Program(ctx, "__kernel void k(__global float *a) {{ a[0] = 1; }}").build(), "k")
        def write(buf):
            try:
                cl.enqueue_copy(queue, buf, host, is_blocking=True)
                return 0
            except cl.Error as exc:
                return exc.code
        def launch(buf):
            try:
                kernel.set_arg(0, buf)
                cl.enqueue_nd_range_kernel(queue, kernel, (1,), None).wait()
                return 0
            except cl.Error as exc:
                return exc.code
        held = [create({chunk}) for _ in range({fit})]
        before = [write(held[0]), launch(held[0])]
        extra = create({chunk})  # past the cap: creation succeeds, as on the real driver
        over = read_layer_stats().to_dict()
        during = [write(held[0]), launch(held[0])]
        queue.finish()
        extra.release()
        after = [write(held[0]), launch(held[0])]
        emit({{"before": before, "over": over, "during": during, "after": after}})
        """,
    )
    code = CL_ERRORS[profile.oom_error]
    assert got["before"] == [0, 0] and got["after"] == [0, 0]
    assert got["during"] == [code, code]
    assert got["over"]["live_bytes"] == fit * chunk <= profile.global_mem
    assert got["over"]["overcommitted_bytes"] == chunk
    assert got["over"]["live_objects"] == fit + 1 and got["over"]["failed_allocations"] == 0


def _killing_at_the_cap(profile: Profile) -> dict[str, str]:
    """Env putting a process on ``profile`` as a driver that also kills at its device counter (trigger both)."""
    return {CONFIG_ENV: str(write_layer_config(replace(profile, oom_trigger=OomTrigger.BOTH)))}


def test_ram_triggered_profile_counts_past_the_cap_and_fails_nothing() -> None:
    """libmali's global memory is a figure, not a limit: past it allocations go on (the RAM budget decides)."""
    profile = load_profile(OOM_KILL)
    assert profile.oom_trigger is OomTrigger.RAM
    chunk = 10 * MiB
    fit = profile.global_mem // chunk
    got = on_board(OOM_KILL, f"held = [create({chunk}) for _ in range({fit + 2})]\nemit(read_layer_stats().to_dict())")
    assert got["live_bytes"] == got["peak_bytes"] == (fit + 2) * chunk > profile.global_mem
    assert got["failed_allocations"] == 0
    assert got["overcommitted_bytes"] == (fit + 2) * chunk - profile.global_mem


def test_oom_kill_sends_sigkill_and_still_writes_stats(stats_file: Path) -> None:
    profile = load_profile(OOM_KILL)
    chunk = 10 * MiB
    fit = profile.global_mem // chunk
    run = run_on_board(
        OOM_KILL,
        PYOPENCL
        + f"""
held = [create({chunk}) for _ in range({fit})]
emit(live())
held.append(create({chunk}))
emit("survived")
""",
        stats_file,
        env=_killing_at_the_cap(profile),
    )
    assert run.returncode == SIGKILL_EXIT, run.stderr
    assert run.results == [fit * chunk]
    assert "mali-hil layer: out of device memory" in run.stderr
    stats = read_stats_file(stats_file)
    assert (stats.live_bytes, stats.peak_bytes, stats.allocations) == (fit * chunk, fit * chunk, fit)
    assert stats.failed_allocations == 1 and stats.cap_bytes == profile.global_mem


@pytest.mark.parametrize("key", available_profiles())
def test_requests_above_max_alloc_follow_the_profile(key: str) -> None:
    profile = load_profile(f"{key}:64MiB")
    size = profile.max_alloc + 1
    if profile.over_max_alloc == "accept" and size > profile.global_mem:
        pytest.skip("accepting a request above max alloc that is also above the cap is the cap's business")
    got = on_board(profile.spec, f"code = create_code({size})\nemit([code, read_layer_stats().to_dict()])")
    code, stats = got
    if profile.over_max_alloc == "accept":
        assert (code, stats["allocations"], stats["failed_allocations"], stats["peak_bytes"]) == (0, 1, 0, size)
    else:
        assert code == CL_ERRORS[profile.over_max_alloc]
        assert (stats["allocations"], stats["failed_allocations"], stats["peak_bytes"]) == (0, 1, 0)


def test_pocl_refusing_a_size_the_profile_allows_is_a_backend_refusal(backend) -> None:
    size = backend.max_alloc + MiB
    spec = next(
        (f"mali-g610:{gib}GiB" for gib in range(2, 65) if load_profile(f"mali-g610:{gib}GiB").max_alloc >= size), None
    )
    if spec is None:
        pytest.skip(f"PoCL's largest buffer ({backend.max_alloc} bytes) is above every board here")
    try:
        got = on_board(spec, f"emit([create_code({size}), read_layer_stats().to_dict()])")
    except BudgetError:
        pytest.skip(f"this machine has too little RAM for {spec}")
    code, stats = got
    assert code == CL_ERRORS["CL_INVALID_BUFFER_SIZE"]
    assert (stats["backend_refusals"], stats["failed_allocations"]) == (1, 0)
    assert (stats["live_bytes"], stats["peak_bytes"], stats["allocations"]) == (0, 0, 0)


CONCURRENT = """
import ctypes, random, sys, threading
sys.setswitchinterval(1e-5)  # interleave the threads often (ctypes calls run without the GIL anyway)
from tinygrad.runtime.autogen import opencl as cl
from mali_hil.runtime.layer_stats import read_layer_stats
MiB = 1 << 20
platform, device, status = cl.cl_platform_id(), cl.cl_device_id(), ctypes.c_int32()
assert cl.clGetPlatformIDs(1, ctypes.byref(platform), None) == 0
assert cl.clGetDeviceIDs(platform, cl.CL_DEVICE_TYPE_GPU, 1, ctypes.byref(device), None) == 0
ctx = cl.clCreateContext(None, 1, ctypes.byref(device), cl.clCreateContext.argtypes[3](), None, ctypes.byref(status))
codes = [[] for _ in range(4)]
def work(index):
    rng, held = random.Random(index), []
    for _ in range(400):
        if held and (len(held) >= 8 or rng.random() < 0.3):
            assert cl.clReleaseMemObject(held.pop(rng.randrange(len(held)))) == 0
            continue
        err = ctypes.c_int32()
        mem = cl.clCreateBuffer(ctx, cl.CL_MEM_READ_WRITE, rng.randint(6, 12) * MiB, None, ctypes.byref(err))
        codes[index].append(err.value)
        if err.value == 0:
            held.append(mem)
    for mem in held:
        assert cl.clReleaseMemObject(mem) == 0
threads = [threading.Thread(target=work, args=(i,)) for i in range(len(codes))]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
emit({"codes": sum(codes, []), "stats": read_layer_stats().to_dict()})
"""


def test_threads_creating_and_releasing_leave_exact_counts() -> None:
    profile = load_profile(ALLOC_ERROR)
    got = run_ok(ALLOC_ERROR, CONCURRENT)
    codes, stats = got["codes"], got["stats"]
    failure = CL_ERRORS[profile.oom_error]
    assert set(codes) <= {0, failure}
    assert codes.count(0) > 0 and codes.count(failure) > 0  # the cap was really contended
    assert stats["live_bytes"] == 0 and stats["live_objects"] == 0
    assert 0 < stats["peak_bytes"] <= profile.global_mem
    assert stats["allocations"] == stats["frees"] == codes.count(0)
    assert stats["failed_allocations"] == codes.count(failure)


def test_one_cap_across_pyopencl_and_tinygrad_loaders() -> None:
    got = on_board(
        ALLOC_ERROR,
        """
        import numpy as np
        from tinygrad import Tensor, Device
        buf = create(4 * MiB)  # through pyopencl's bundled ICD loader
        t = Tensor(np.zeros(2 * MiB, np.uint8), device="CL").realize()  # through the system loader
        maps = {line.split()[-1] for line in open("/proc/self/maps") if "libOpenCL" in line}
        emit([Device["CL"].device_name, ctx.devices[0].name, len(maps), live()])
        """,
    )
    profile = load_profile(ALLOC_ERROR)
    assert got == [profile.name, profile.name, 2, 6 * MiB]


def test_reading_counters_without_the_layer_says_how_to_get_it() -> None:
    run = run_snippet(
        """
        from mali_hil.errors import BackendError
        from mali_hil.runtime.layer_stats import read_layer_stats
        try:
            read_layer_stats()
            emit("read")
        except BackendError as exc:
            emit(str(exc))
        """
    )
    assert "not loaded in this process" in run.result and "activate()" in run.result


def test_stats_file_problems_are_backend_errors(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="no layer stats file"):
        read_stats_file(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"live_bytes": 1', encoding="utf-8")
    with pytest.raises(BackendError, match="unreadable"):
        read_stats_file(broken)
    partial = tmp_path / "partial.json"
    partial.write_text('{"live_bytes": 1, "peak_bytes": true}', encoding="utf-8")
    with pytest.raises(BackendError, match="peak_bytes"):
        read_stats_file(partial)
