"""`mali-hil doctor`: every part the emulated Mali needs, each line ``ok`` or the exact fix."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mali_hil.errors import MaliHilError

DOCTOR_PROFILE = "mali-g52"  # any profile: the check is that the layer loads and answers with its identity


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str  # what was found, or the fix

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name:<14} {self.detail}"


def _icd_loader() -> Check:
    from mali_hil.emulator.backend import backend_info

    try:
        info = backend_info()
    except MaliHilError as exc:
        return Check("opencl", False, str(exc))
    return Check("opencl", True, f"{info.platform_version.split('  ')[0]} on {info.device_name}")


def _pocl() -> Check:
    icds = sorted(Path("/etc/OpenCL/vendors").glob("*.icd"))
    if not any("pocl" in p.name for p in icds):
        return Check("pocl", False, "PoCL's ICD file is missing: apt-get install pocl-opencl-icd")
    return Check("pocl", True, ", ".join(str(p) for p in icds))


def _headers() -> Check:
    header = Path("/usr/include/CL/cl_layer.h")
    if not header.is_file():
        return Check("headers", False, "CL/cl_layer.h missing: apt-get install opencl-c-headers")
    return Check("headers", True, str(header))


def _compiler() -> Check:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return Check("compiler", False, "no C compiler: apt-get install gcc libc6-dev")
    return Check("compiler", True, cc)


def _layer() -> Check:
    """Built, and loaded for real: a process on a board must see the profile's device through the layer (a file
    that exists proves nothing; an ICD loader skips a layer it cannot load, without an error)."""
    from mali_hil.emulator.build import build_layer
    from mali_hil.emulator.emulated_board import EmulatedBoard
    from mali_hil.emulator.info import describe

    try:
        path = build_layer()
        board = EmulatedBoard.from_spec(f"{DOCTOR_PROFILE}:256MiB")
        seen = [device["name"] for platform in describe(board)["platforms"] for device in platform["devices"]]
    except MaliHilError as exc:
        return Check("layer", False, str(exc))
    if seen[:1] != [board.profile.name]:
        why = f"a process on {board.profile.spec} sees {seen} instead of {board.profile.name!r}"
        return Check("layer", False, f"{path} is built, but {why}: the layer did not load (rm {path}; mali-hil doctor)")
    return Check("layer", True, f"{path} (loaded: a process on {board.profile.spec} sees {seen[0]!r})")


def _clang() -> Check:
    # tinygrad's CPU device (the SUPPORT_BF16=0 host route) compiles kernels with clang
    clang = shutil.which("clang")
    if clang is None:
        return Check("clang", False, "tinygrad's CPU device needs clang: apt-get install clang")
    return Check("clang", True, clang)


def _fp16() -> Check:
    from mali_hil.emulator.backend import backend_info

    try:
        info = backend_info()
    except MaliHilError as exc:
        return Check("fp16", False, str(exc))
    # Not a failure: the emulator runs either way, and every report states which one it was.
    hint = "" if info.has_fp16 else "; `mali-hil emulator build-backend` builds a PoCL with it (~7 min CPU)"
    return Check("fp16", True, info.fp16_fidelity.describe() + hint)


def _cgroup() -> Check:
    from mali_hil.runtime.ram import cgroup_status

    return Check("ram-cap", True, cgroup_status())


CHECKS: tuple[Callable[[], Check], ...] = (_icd_loader, _pocl, _headers, _compiler, _layer, _clang, _fp16, _cgroup)


def run_checks() -> Iterator[Check]:
    for check in CHECKS:
        yield check()
