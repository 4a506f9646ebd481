"""What the worker prepares once, before it forks any job: the work every job's fresh child would otherwise redo.

Each job runs in a fresh child of the worker (:mod:`mali_hil.harness.worker.serve`), so whatever a process does
once and keeps (imports, tinygrad's compiled rewrite rules, the default device) is paid by every job unless the
worker has done it before the fork. Only what is the same for every job and opens no device belongs here: a driver
thread would not survive the fork, and nothing of a loader ever runs in the worker.

Measured on the property suite (``benchmarks/README.md``): tinygrad choosing its default device in a fresh process
imported every backend it knows (NV's and AMD's generated bindings among them) and tried each: about 3 s and 48 MiB
in every job that made a constant on the default device (the host-converting loaders); the rewrite rules compiled
on first use cost up to 0.5 s in a job that compiles a kernel; the loader entry-point scan 15 ms in every job.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
from pathlib import Path

from mali_hil.harness.worker.job import DEVICE


def choose_default_device() -> None:
    """Make the device under test tinygrad's default, before tinygrad is imported (it reads ``DEV`` then).

    Without it, tinygrad picks its default by opening every backend it knows in turn until one works, which in a
    fresh process imports each one's bindings; on a board with an OpenCL Mali that search ends at CL anyway.
    A ``DEV`` the user set is theirs to keep."""
    os.environ.setdefault("DEV", DEVICE)


def warm_imports() -> None:
    """What every job needs, imported (and compiled) once here so that each fork starts warm; opens no device."""
    import numpy
    import tinygrad
    import tinygrad.codegen.opt.heuristic
    import tinygrad.nn.state
    import tinygrad.runtime.ops_cl
    import tinygrad.runtime.ops_cpu  # the host-converting loaders' device (importing it opens nothing)
    import tinygrad.runtime.ops_disk  # safe_load's
    import tinygrad.runtime.ops_npy
    import tinygrad.runtime.ops_python

    import mali_hil.harness.checkpoints  # noqa: F401
    from mali_hil.harness.loaders import registry

    registry.available()  # the built-in variants' modules (definitions only: no load runs)
    registry.freeze_entry_points()  # the installed packages do not change under a worker
    import numpy.ctypeslib  # noqa: F401  (what the first job would import: tinygrad's CL device and numpy views)
    import tinygrad.uop.upat  # noqa: F401

    compile_rewrite_rules()
    preload_opencl_libraries()


def compile_rewrite_rules() -> int:
    """Compile every rewrite rule of tinygrad's pattern matchers now, as each would be on its first use in a job;
    returns how many were compiled (0 when this tinygrad keeps its rules some other way: jobs then compile them
    as they go, which is slower and nothing else).

    tinygrad defers compiling a rule (``upat_deferred_compile``) until a graph first meets it, then swaps the
    compiled function into the matcher's entry, so a warm process never pays twice. The matchers are module
    globals made at import, which the fork shares with every child."""
    from tinygrad.uop.ops import PatternMatcher, upat_interpret
    from tinygrad.uop.upat import upat_compile

    compiled = 0
    entries = {id(entry): entry for matcher in gc.get_objects() if isinstance(matcher, PatternMatcher)
               for group in matcher.pdict.values() for entry in group}  # fmt: skip
    for entry in entries.values():
        deferred = entry[1]
        code = getattr(deferred, "__code__", None)
        if code is None or deferred.__name__ != "lazy_compile" or not deferred.__closure__:
            continue
        cells = dict(zip(code.co_freevars, (cell.cell_contents for cell in deferred.__closure__), strict=True))
        if "p" in cells and "fxn" in cells:
            entry[1] = upat_compile(cells["p"], cells["fxn"]) or upat_interpret(cells["p"], cells["fxn"])
            compiled += 1
    return compiled


def preload_opencl_libraries() -> None:
    """Map the OpenCL driver (PoCL and its LLVM) and our layer, without calling into them: dynamic loading and
    relocation were most of a job child's device open (about 0.1 s a job), and are the same for every job. No
    OpenCL call is made, so no driver thread exists to be lost at the fork; each child initialises its own."""
    names = [line.strip() for line in _icd_lines(os.environ.get("OCL_ICD_VENDORS", ""))]
    names += [path for path in os.environ.get("OPENCL_LAYERS", "").split(":") if path]
    for name in names:
        with contextlib.suppress(OSError):
            ctypes.CDLL(name)


def _icd_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text(encoding="utf-8").splitlines() if path.endswith(".icd") else []
    except OSError:
        return []
