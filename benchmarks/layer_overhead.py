"""What the mali-hil layer costs on the hot path: create + release of small buffers, with and without it.

One invocation starts two long-lived worker processes (one on an emulated board, one on plain PoCL), warms
both up, then alternates timed rounds between them so drift (CPU frequency, other load) hits both alike.
It prints the median round time of each and the ratio with/without; the goal is <= 1.02.

    python benchmarks/layer_overhead.py [--count 10000] [--repeats 15] [--size 4096] [--board mali-g52:2GiB]

Times are CPU time of the calling thread (create/release run entirely on it), so other load on the machine
skews them far less than wall time. ``--client ctypes`` (default) calls the system ICD loader through raw ctypes:
the thinnest Python client, where the layer's share is largest. ``--client pyopencl`` is what a user sees.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

CL_MEM_READ_WRITE = 1
CL_DEVICE_TYPE_ALL = 0xFFFFFFFF


def _check(status: int, what: str) -> None:
    if status != 0:
        raise SystemExit(f"{what} failed with OpenCL error {status}")


def _open_context(cl: ctypes.CDLL) -> ctypes.c_void_p:
    platform, device, status = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_int32()
    _check(cl.clGetPlatformIDs(1, ctypes.byref(platform), None), "clGetPlatformIDs")
    _check(cl.clGetDeviceIDs(platform, CL_DEVICE_TYPE_ALL, 1, ctypes.byref(device), None), "clGetDeviceIDs")
    cl.clCreateContext.restype = ctypes.c_void_p
    context = cl.clCreateContext(None, 1, ctypes.byref(device), None, None, ctypes.byref(status))
    _check(status.value, "clCreateContext")
    return ctypes.c_void_p(context)


def _round(cl: ctypes.CDLL, context: ctypes.c_void_p, count: int, size: int) -> float:
    create, release, status = cl.clCreateBuffer, cl.clReleaseMemObject, ctypes.c_int32()
    byref_status, flags, nbytes = ctypes.byref(status), ctypes.c_uint64(CL_MEM_READ_WRITE), ctypes.c_size_t(size)
    start = time.thread_time()
    for _ in range(count):
        release(create(context, flags, nbytes, None, byref_status))
    elapsed = time.thread_time() - start
    _check(status.value, "clCreateBuffer")
    return elapsed


def _ctypes_round_maker(size: int) -> Callable[[int], float]:
    cl = ctypes.CDLL("libOpenCL.so.1")
    cl.clCreateBuffer.restype = ctypes.c_void_p
    cl.clCreateBuffer.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p]
    cl.clReleaseMemObject.argtypes = [ctypes.c_void_p]
    context = _open_context(cl)
    return lambda count: _round(cl, context, count, size)


def _pyopencl_round_maker(size: int) -> Callable[[int], float]:
    import pyopencl as cl

    context = cl.Context([cl.get_platforms()[0].get_devices()[0]])
    flags = cl.mem_flags.READ_WRITE

    def run(count: int) -> float:
        start = time.thread_time()
        for _ in range(count):
            cl.Buffer(context, flags, size).release()
        return time.thread_time() - start

    return run


CLIENTS = {"ctypes": _ctypes_round_maker, "pyopencl": _pyopencl_round_maker}


def worker(client: str, count: int, size: int) -> None:
    """Serve timed rounds: one line in ("run"), one line out (seconds of this thread's CPU time)."""
    run = CLIENTS[client](size)
    run(count)  # warm-up: PoCL's first allocations and page faults
    for line in sys.stdin:
        if line.strip() != "run":
            break
        print(f"{run(count):.9f}", flush=True)


def _spawn(env: dict[str, str], client: str, count: int, size: int) -> subprocess.Popen[str]:
    cmd = [sys.executable, __file__, "--worker", "--client", client, "--count", str(count), "--size", str(size)]
    return subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _timed(proc: subprocess.Popen[str]) -> float:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("run\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"benchmark worker died (exit code {proc.wait()})")
    return float(line)


def compare(client: str, count: int, size: int, repeats: int, board_spec: str) -> tuple[float, float]:
    from mali_hil.emulator.emulated_board import EmulatedBoard

    plain_env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENCL_LAYERS", "MALI_HIL_"))}
    layered_env = {**plain_env, **EmulatedBoard.from_spec(board_spec).environ()}
    workers = {"with": _spawn(layered_env, client, count, size), "without": _spawn(plain_env, client, count, size)}
    times: dict[str, list[float]] = {"with": [], "without": []}
    try:
        for i in range(repeats):
            order = ("with", "without") if i % 2 == 0 else ("without", "with")  # alternate who goes first
            for name in order:
                times[name].append(_timed(workers[name]))
    finally:
        for proc in workers.values():
            proc.communicate("stop\n", timeout=60)
    return statistics.median(times["with"]), statistics.median(times["without"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="create+release pairs per round")
    parser.add_argument("--size", type=int, default=4096, help="buffer size in bytes")
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds per side")
    parser.add_argument("--board", default="mali-g52:2GiB", help="board spec for the layered side")
    parser.add_argument("--client", choices=sorted(CLIENTS), default="ctypes", help="who makes the OpenCL calls")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.client, args.count, args.size)
        return
    with_layer, without = compare(args.client, args.count, args.size, args.repeats, args.board)
    per_op = 1e9 / args.count
    print(
        f"{args.count} x create+release of {args.size}-byte buffers via {args.client}, "
        f"median CPU time of {args.repeats} rounds"
    )
    print(f"  without layer: {without * 1e3:8.2f} ms  ({without * per_op:7.0f} ns per pair)")
    print(f"  with layer:    {with_layer * 1e3:8.2f} ms  ({with_layer * per_op:7.0f} ns per pair)")
    print(f"  layer cost:    {(with_layer - without) * per_op:8.0f} ns per pair")
    print(f"  ratio with/without: {with_layer / without:.4f}  (goal <= 1.02)")


if __name__ == "__main__":
    main()
