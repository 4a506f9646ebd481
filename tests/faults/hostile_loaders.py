"""Loaders that bend the verdict from inside the job, as real code can (issue 25, points 1-4), named by module path
(``tests.faults.hostile_loaders:NAME``). Each attacks the harness, then returns what an honest loader would, so a
verdict of ``ok`` with honest figures would mean the attack went unnoticed or did nothing.

``MALI_HIL_TEST_PIDFILE`` names a file where a loader writes the pids of the processes it leaves behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from mali_hil.harness.loaders import get_loader

PIDFILE_ENV = "MALI_HIL_TEST_PIDFILE"
POISON_ENV = "MALI_HIL_TEST_POISON"
MIB = 1 << 20


def honest(checkpoint: Any, device: str, options: Any) -> dict[str, Any]:
    return get_loader("chunked").load(checkpoint, device, options)


def tells_cwd_and_env(checkpoint: Any, device: str, options: Any) -> dict[str, Any]:
    """Says where it runs and whether the environment was poisoned, as its error (the record carries it)."""
    raise LookupError(json.dumps({"cwd": os.getcwd(), "poison": os.environ.get(POISON_ENV)}))


# --- 1. patching the worker --------------------------------------------------------------------------------------
def patches_the_contract_check(checkpoint: Any, device: str, options: Any) -> dict[str, Any]:
    """Lets its tensors on the CPU pass, in this job and (on main) in every later one of the warm worker."""
    from tinygrad import Tensor

    from mali_hil.harness.worker import job, serve

    for module in (job, serve):  # wherever the worker keeps it (serve on main at a64acc3)
        if hasattr(module, "_check_loaded"):
            module._check_loaded = lambda loaded, *_: loaded
    return {name: Tensor.zeros(4).realize() for name in ("cpu",)}


def patches_the_digest(checkpoint: Any, device: str, options: Any) -> dict[str, Any]:
    """All-zero tensors would digest as the real values."""
    from mali_hil.harness.values.digest import Digest

    tensors = honest(checkpoint, device, options)
    Digest.hexdigest = lambda self: "0" * 64
    return tensors


def patches_the_meter_and_holds_memory(checkpoint: Any, device: str, options: Any) -> dict[str, Any]:
    """Replaces every RAM reading and the meter it can reach, then holds 48 MiB of RAM and 16 MiB of device memory
    while loading: the figures must show them."""
    from tinygrad import dtypes

    from mali_hil.harness.loaders._device import allocate
    from mali_hil.runtime import memory, meter

    nothing = memory.ProcessMemory()
    for module in (memory, meter):  # the readings, wherever they were imported to
        for name in ("read_process_memory", "read_private_memory"):
            if hasattr(module, name):
                setattr(module, name, lambda pid: nothing)
    held = b"\1" * (48 * MIB)
    block = allocate((4 * MIB,), dtypes.float32, device)  # 16 MiB on the device (a buffer, no kernel to compile)
    tensors = honest(checkpoint, device, options)
    del held, block
    return tensors


def resets_the_layer_stats(checkpoint: Any, device: str, options: Any) -> dict[str, Any]:
    from tinygrad import dtypes

    from mali_hil.harness.loaders._device import allocate
    from mali_hil.runtime.layer_stats import reset_layer_stats

    block = allocate((4 * MIB,), dtypes.float32, device)
    tensors = honest(checkpoint, device, options)
    del block
    reset_layer_stats()
    return tensors


# --- 2. forged evidence ------------------------------------------------------------------------------------------
def forges_a_layer_kill(checkpoint: Any, device: str, options: Any) -> dict[str, Any]:
    """Writes the layer's exit file as its own OOM kill would, then SIGKILLs itself."""
    honest(checkpoint, device, options)
    path = os.environ["MALI_HIL_STATS_FILE"]
    counters = (
        "generation",
        "live_bytes",
        "peak_bytes",
        "live_objects",
        "allocations",
        "frees",
        "failed_allocations",
        "backend_refusals",
        "overcommitted_bytes",
        "cap_bytes",
        "fp16_advertised",
        "last_refused_bytes",
    )
    forged = dict.fromkeys(counters, 0) | {"failed_allocations": 1, "cap_bytes": 1 << 30, "last_refused_bytes": 2 << 30}
    Path(path).write_text(json.dumps(forged))
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


def forges_a_result_line(checkpoint: Any, device: str, options: Any) -> dict[str, Any]:
    """Writes an ``ok`` result for the next few job ids on every pipe it holds (the protocol's among them, on main)."""
    tensors = honest(checkpoint, device, options)
    for entry in os.scandir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(entry.path).startswith("pipe:"):
                for job_id in range(1, 8):
                    result = {"status": "ok", "loader": "forged", "device": "forged", "checkpoint": "forged"}
                    line = json.dumps({"op": "result", "id": job_id, "result": result}) + "\n"
                    os.write(int(entry.name), line.encode())
    return tensors


# --- 3. state that outlives a job ---------------------------------------------------------------------------------
def changes_cwd_and_env(checkpoint: Any, device: str, options: Any) -> dict[str, Any]:
    tensors = honest(checkpoint, device, options)
    os.chdir("/")
    os.environ[POISON_ENV] = "poisoned"
    return tensors


def leaks_descriptors_until_emfile(checkpoint: Any, device: str, options: Any) -> dict[str, Any]:
    tensors = honest(checkpoint, device, options)
    with contextlib.suppress(OSError):
        while True:
            os.open(os.devnull, os.O_RDONLY)
    return tensors


# --- 4. escaping: a daemon's double fork ----------------------------------------------------------------------------
def _daemon(hold_bytes: int) -> int:
    """Double fork with setsid in between, as a daemon does; the grandchild holds ``hold_bytes`` of RAM and all
    the job's descriptors, forever. Returns once it holds them (or was killed trying), with its pid written to the
    pidfile first."""
    ready_r, ready_w = os.pipe()
    first = os.fork()
    if first == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(ready_w, f"{os.getpid()}\n".encode())
            held = b"\1" * hold_bytes  # written, so resident
            os.write(ready_w, b"held\n")
            while held:
                time.sleep(60)
        os._exit(0)
    os.waitpid(first, 0)
    os.close(ready_w)
    with os.fdopen(ready_r, "rb") as ready:
        pid = int(ready.readline())
        with Path(os.environ[PIDFILE_ENV]).open("a") as out:
            out.write(f"{pid}\n")
        ready.readline()
    return pid


def daemon_holds_memory(checkpoint: Any, device: str, options: Any) -> dict[str, Any]:
    """A setsid'd grandchild holding 768 MiB (more than the test's board has)."""
    _daemon(768 * MIB)
    return honest(checkpoint, device, options)


def daemon_holds_the_pipes(checkpoint: Any, device: str, options: Any) -> dict[str, Any]:
    """A setsid'd grandchild that never exits and holds every descriptor the job had."""
    _daemon(0)
    return honest(checkpoint, device, options)
