"""Build a PoCL with ``cl_khr_fp16`` (``mali-hil emulator build-backend``), cached by content, used when present.

Every Mali has native fp16; Debian's PoCL (3.1 in bookworm, 6.0 in trixie) is built without it. PoCL's CMake
enables ``cl_khr_fp16`` on the CPU device when LLVM >= 16, conformance mode is off and the host compiler has
``_Float16``; Debian 12 ships ``llvm-16-dev``, and PoCL 6.0's source comes from Debian's archive through apt
(a private apt configuration with a trixie ``deb-src`` line: the machine's own sources are not touched, and
apt checks the archive's signature). The orig tarball's SHA-256 is pinned as well.

The install directory is named by a hash of everything that decides the binary (the pinned source, the CMake
options, LLVM's version, the host CPU the kernel library is tuned for), so a change of any of them builds anew
and a stale build is never picked up. PoCL is relocatable, so it is installed in a temporary directory and
renamed into place: a half-finished build is never seen.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mali_hil.errors import BackendError

POCL_VERSION = "6.0"
DEBIAN_SUITE = "trixie"  # the first Debian release with PoCL >= 4 (fp16 needs >= 4 and LLVM >= 16)
ORIG_TARBALL = f"pocl_{POCL_VERSION}.orig.tar.gz"
ORIG_SHA256 = "de9710223fc1855f833dbbf42ea2681e06aa8ec0464f0201104dc80a74dfd1f2"  # Debian's Sources for 6.0-6
LLVM_MAJOR = 16
BUILD_PACKAGES = (
    f"llvm-{LLVM_MAJOR}-dev", f"clang-{LLVM_MAJOR}", f"libclang-{LLVM_MAJOR}-dev", f"libclang-cpp{LLVM_MAJOR}-dev",
    "libhwloc-dev", "ocl-icd-dev", "cmake", "make", "g++", "pkg-config", "dpkg-dev",
)  # fmt: skip
# Only the CPU device, no tests or examples (they double the build); conformance mode would drop fp16.
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    f"-DWITH_LLVM_CONFIG=/usr/bin/llvm-config-{LLVM_MAJOR}",
    "-DENABLE_ICD=ON",
    "-DENABLE_CONFORMANCE=OFF",
    "-DENABLE_RELOCATION=ON",
    "-DENABLE_HWLOC=ON",
    "-DENABLE_IPO=OFF",  # link-time optimisation doubles the build time for an emulator that runs small kernels
    "-DENABLE_TESTS=OFF",
    "-DENABLE_EXAMPLES=OFF",
    "-DENABLE_POCLCC=OFF",
    "-DENABLE_SPIRV=OFF",
    "-DENABLE_LEVEL0=OFF",
    "-DENABLE_REMOTE_CLIENT=OFF",
    "-DENABLE_REMOTE_SERVER=OFF",
    "-DENABLE_LOADABLE_DRIVERS=OFF",
    "-DKERNELLIB_HOST_CPU_VARIANTS=native",
)
ICD_NAME = "pocl-fp16.icd"
INSTALL_HINT = f"apt-get install {' '.join(BUILD_PACKAGES)}"


@dataclass(frozen=True)
class BuiltBackend:
    prefix: Path

    @property
    def icd(self) -> Path:
        return self.prefix / ICD_NAME


def host_cpu() -> str:
    """The CPU the kernel library is compiled for: an x86-64 micro-architecture level, not the exact model.

    LLVM cannot name the CPU of many VMs ("Host CPU: (unknown)", as here), and a level keeps a cached build valid
    on any machine of that level; v3 has F16C, so half conversions are single instructions.
    """
    if platform.machine() != "x86_64":
        return "generic"
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
        flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    return "x86-64-v3" if {"avx2", "f16c", "fma", "bmi2", "movbe"} <= set(flags) else "x86-64-v2"


def cmake_options() -> tuple[str, ...]:
    return (*CMAKE_OPTIONS, f"-DLLC_HOST_CPU={host_cpu()}")


def build_key() -> str | None:
    """Hash of what decides the built binary, or None where LLVM 16 is absent (no build can exist then)."""
    llvm_config = Path(f"/usr/bin/llvm-config-{LLVM_MAJOR}")
    if not llvm_config.is_file():
        return None
    llvm = subprocess.run([llvm_config, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    text = "\0".join((POCL_VERSION, ORIG_SHA256, *cmake_options(), llvm))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def backend_root() -> Path:
    from mali_hil.paths import cache_dir

    return cache_dir() / "backend"


def built_backend() -> BuiltBackend | None:
    """The fp16 PoCL for this machine, if `mali-hil emulator build-backend` has built it."""
    key = build_key()
    if key is None:
        return None
    prefix = backend_root() / f"pocl-{POCL_VERSION}-{key}"
    return BuiltBackend(prefix) if (prefix / ICD_NAME).is_file() else None


def build_backend(jobs: int | None = None, log=print) -> BuiltBackend:
    """Fetch, configure, build and install PoCL with fp16 unless this machine already has it."""
    found = built_backend()
    if found is not None:
        log(f"build-backend: up to date: {found.prefix}")
        return found
    missing = [tool for tool in ("cmake", "make", "g++", "apt-get", "dpkg-source") if shutil.which(tool) is None]
    key = build_key()
    if missing or key is None:
        raise BackendError(f"building PoCL with fp16 needs LLVM {LLVM_MAJOR} and a toolchain: {INSTALL_HINT}")
    root = backend_root()
    root.mkdir(parents=True, exist_ok=True)
    prefix = root / f"pocl-{POCL_VERSION}-{key}"
    with tempfile.TemporaryDirectory(dir=root, prefix="build-") as work:
        work_dir = Path(work)
        source = _fetch_source(work_dir, log)
        staging = work_dir / "install"
        build = work_dir / "build"
        build.mkdir()
        _run(["cmake", str(source), f"-DCMAKE_INSTALL_PREFIX={staging}", *cmake_options()], build, log)
        _run(["make", f"-j{jobs or os.cpu_count() or 1}", "install"], build, log)
        library = next(iter(sorted((staging / "lib").glob("libpocl.so.*"))), None) or _missing(staging)
        try:
            staging.rename(prefix)
        except OSError:
            if not prefix.is_dir():
                raise
            # a concurrent builder got there first with the same content (the name is its hash): keep theirs
    built = BuiltBackend(prefix)
    # the ICD names the library by absolute path, written after the rename so it points at the final place
    tmp = prefix / f"{ICD_NAME}.{os.getpid()}.tmp"
    tmp.write_text(f"{prefix / 'lib' / library.name}\n", encoding="utf-8")
    tmp.replace(built.icd)
    log(f"build-backend: installed {prefix}")
    return built


def _missing(staging: Path) -> Path:
    raise BackendError(f"PoCL built but installed no libpocl.so under {staging / 'lib'}")


def _fetch_source(work: Path, log) -> Path:
    """PoCL's orig tarball from Debian's archive through apt, with a private config (the system's is untouched)."""
    apt = work / "apt"
    for sub in ("lists/partial", "cache/archives/partial"):
        (apt / sub).mkdir(parents=True)
    (apt / "sources.list").write_text(f"deb-src http://deb.debian.org/debian {DEBIAN_SUITE} main\n")
    options = [
        f"-oDir::Etc::SourceList={apt / 'sources.list'}", "-oDir::Etc::SourceParts=/nonexistent",
        f"-oDir::State::Lists={apt / 'lists'}", f"-oDir::Cache={apt / 'cache'}", "-oDebug::NoLocking=1",
        "-oAPT::Sandbox::User=root", "-qq",
    ]  # fmt: skip
    _run(["apt-get", *options, "update"], work, log)
    _run(["apt-get", *options, "source", "--download-only", "pocl"], work, log)
    tarball = work / ORIG_TARBALL
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    if digest != ORIG_SHA256:
        raise BackendError(f"{ORIG_TARBALL} from Debian has SHA-256 {digest}, expected {ORIG_SHA256}: not building")
    shutil.unpack_archive(tarball, work)
    return work / f"pocl-{POCL_VERSION}"


def _run(cmd: list[str], cwd: Path, log) -> None:
    log(f"build-backend: {' '.join(cmd[:3])} ...")
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-30:])
        raise BackendError(f"building PoCL failed at `{' '.join(cmd)}` (exit {result.returncode}):\n{tail}")
