"""What the OpenCL backend underneath the layer can do, asked directly (no layer) through the ICD loader.

Used by `mali-hil doctor` and by reports, so a run can say e.g. that fp16 is emulated because PoCL lacks it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import os
import signal
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from mali_hil.emulator.errors import BackendError

_CL_PLATFORM_NAME, _CL_PLATFORM_VERSION = 0x0902, 0x0901
_CL_DEVICE_TYPE_ALL = 0xFFFFFFFF
_CL_DEVICE_NAME, _CL_DEVICE_EXTENSIONS, _CL_DEVICE_MAX_MEM_ALLOC_SIZE = 0x102B, 0x1030, 0x1010
_INSTALL_HINT = "apt-get install ocl-icd-libopencl1 pocl-opencl-icd"


# Signals a process dies of when its own memory is corrupted. On the emulator, kernels run on the CPU inside the
# process (PoCL), so a kernel that writes out of bounds corrupts the process's heap and takes it down this way; a
# Mali's kernel writes GPU memory through its own page tables, and at worst faults its GPU context.
CRASH_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE})


def backend_crash(returncode: int) -> str | None:
    """Why a process on an emulated board that died of ``-returncode`` is the CPU backend's fault, or None when it
    did not die of a crash signal (an exit, an OOM kill, a timeout)."""
    if returncode >= 0 or -returncode not in CRASH_SIGNALS:
        return None
    name = signal.Signals(-returncode).name
    return (f"{name}, a backend fault: on the emulator most likely a kernel's out-of-bounds write, which corrupts "
            "the process because PoCL runs kernels in it; a Mali would not take the process down this way, and the "
            "board's memory did not run out")  # fmt: skip


class Fp16Fidelity(enum.StrEnum):
    """Whether half precision on a device is what a Mali does (every Mali has ``cl_khr_fp16``)."""

    NATIVE = "native"  # the device (or the backend under the emulated one) has cl_khr_fp16
    EMULATED = "emulated"  # it lacks cl_khr_fp16: tinygrad emulates half through float32
    UNKNOWN = "unknown"  # not known yet (no worker has described the device)

    def describe(self) -> str:
        """The one sentence reports print."""
        return {
            Fp16Fidelity.NATIVE: "fp16: native (backend has cl_khr_fp16)",
            Fp16Fidelity.EMULATED: "fp16: emulated (backend lacks cl_khr_fp16)",
            Fp16Fidelity.UNKNOWN: "fp16: unknown",
        }[self]


@dataclass(frozen=True)
class BackendInfo:
    platform_name: str
    platform_version: str
    device_name: str
    extensions: tuple[str, ...]
    max_alloc: int  # the backend's own single-allocation limit (PoCL: 1 GiB here), which the layer cannot lift

    @property
    def has_fp16(self) -> bool:
        return "cl_khr_fp16" in self.extensions

    @property
    def fp16_fidelity(self) -> Fp16Fidelity:
        return Fp16Fidelity.NATIVE if self.has_fp16 else Fp16Fidelity.EMULATED


def _info(fn, handle, param: int) -> bytes:
    size = ctypes.c_size_t()
    fn(handle, param, 0, None, ctypes.byref(size))
    buf = ctypes.create_string_buffer(size.value)
    fn(handle, param, size.value, buf, None)
    return buf.raw


ICD_VENDORS = Path("/etc/OpenCL/vendors")
POCL_ENV = "MALI_HIL_POCL"  # "system": Debian's PoCL even where an fp16 build exists; "fp16": require that build


def backend_icd() -> Path:
    """The ICD file of the PoCL that emulated boards run on; processes on a board are pinned to it
    (``OCL_ICD_VENDORS``), so that no other installed driver (a real board's libmali, Mesa's rusticl) comes first
    and wears the Mali identity.

    The PoCL with ``cl_khr_fp16`` that ``mali-hil emulator build-backend`` built is used when it is present (every
    Mali has native fp16); otherwise the system's PoCL, and every report then says fp16 was emulated.
    ``MALI_HIL_POCL=system`` forces the system's PoCL, ``MALI_HIL_POCL=fp16`` refuses to run without the
    build rather than fall back.
    """
    choice = os.environ.get(POCL_ENV, "")
    if choice not in ("", "system", "fp16"):
        raise BackendError(f"{POCL_ENV}={choice!r}: use 'system', 'fp16' or leave it unset")
    if choice != "system":
        from mali_hil.emulator.backend_build import built_backend

        built = built_backend()
        if built is not None:
            return built.icd
        if choice == "fp16":
            raise BackendError(
                f"{POCL_ENV}=fp16 but no PoCL with fp16 is built on this machine: run `mali-hil emulator "
                "build-backend` (minutes of CPU), or unset it to run with fp16 emulated"
            )
    return system_icd()


def system_icd() -> Path:
    """The system's PoCL ICD file (Debian's pocl-opencl-icd)."""
    for icd in sorted(ICD_VENDORS.glob("*.icd")):
        try:
            if "pocl" in icd.name or "pocl" in icd.read_text(errors="replace"):
                return icd
        except OSError:
            continue
    raise BackendError(f"PoCL's ICD file is not in {ICD_VENDORS}: {_INSTALL_HINT}")


@cache
def backend_info() -> BackendInfo:
    """The backend's platform and device as they report themselves. Call in a process without the layer; a
    process that has not loaded OpenCL yet is pinned to the board's backend first (as boards are)."""
    if not _opencl_mapped():
        os.environ.update({"OCL_ICD_VENDORS": str(backend_icd()), "OCL_ICD_FILENAMES": ""})
    path = ctypes.util.find_library("OpenCL") or "libOpenCL.so.1"
    try:
        cl = ctypes.CDLL(path)
    except OSError:
        raise BackendError(f"no OpenCL ICD loader (libOpenCL.so.1) on this machine: {_INSTALL_HINT}") from None
    count = ctypes.c_uint32()
    if cl.clGetPlatformIDs(0, None, ctypes.byref(count)) != 0 or count.value == 0:
        raise BackendError(f"the ICD loader finds no OpenCL platform (is PoCL installed?): {_INSTALL_HINT}")
    platforms = (ctypes.c_void_p * count.value)()
    cl.clGetPlatformIDs(count.value, platforms, None)
    device = ctypes.c_void_p()
    if (
        cl.clGetDeviceIDs(
            ctypes.c_void_p(platforms[0]), ctypes.c_uint64(_CL_DEVICE_TYPE_ALL), 1, ctypes.byref(device), None
        )
        != 0
    ):
        raise BackendError(f"the OpenCL platform has no device: {_INSTALL_HINT}")
    platform = ctypes.c_void_p(platforms[0])
    max_alloc = ctypes.c_uint64()
    cl.clGetDeviceInfo(device, _CL_DEVICE_MAX_MEM_ALLOC_SIZE, 8, ctypes.byref(max_alloc), None)

    def text(raw: bytes) -> str:
        return raw.split(b"\0", 1)[0].decode(errors="replace")

    return BackendInfo(
        platform_name=text(_info(cl.clGetPlatformInfo, platform, _CL_PLATFORM_NAME)),
        platform_version=text(_info(cl.clGetPlatformInfo, platform, _CL_PLATFORM_VERSION)),
        device_name=text(_info(cl.clGetDeviceInfo, device, _CL_DEVICE_NAME)),
        extensions=tuple(text(_info(cl.clGetDeviceInfo, device, _CL_DEVICE_EXTENSIONS)).split()),
        max_alloc=max_alloc.value,
    )


def _opencl_mapped() -> bool:
    with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
        return any("libOpenCL" in line for line in maps)
