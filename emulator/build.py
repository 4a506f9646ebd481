"""Compile the OpenCL layer (``emulator/layer/mali_layer.c``) once per source and compiler, and cache the .so.

The cache name carries a hash of the source, the flags and the compiler's version, so an edit or a compiler
upgrade gives a new file and an old one is never reused by mistake. Two processes may build at once: each
compiles to its own temporary name and renames it into place, and rename is atomic.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from mali_hil.emulator.errors import LayerBuildError

SOURCE = Path(__file__).parent / "layer" / "mali_layer.c"
INCLUDE_DIR = Path("/usr/include")
REQUIRED_HEADERS = ("CL/cl_layer.h", "CL/cl_icd.h")
FLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-pthread", "-fvisibility=hidden", f"-I{INCLUDE_DIR}")
INSTALL_HINT = "apt-get install gcc opencl-c-headers"

_built: Path | None = None


def layer_path() -> Path:
    """The compiled layer, built on first use (this is what ``OPENCL_LAYERS`` names)."""
    return _built if _built is not None and _built.is_file() else build_layer()


def build_layer(force: bool = False) -> Path:
    """Compile the layer unless an up-to-date build is cached; ``force`` recompiles anyway."""
    global _built
    compiler = _find_compiler()
    _check_headers()
    source = SOURCE.read_bytes()
    target = _cache_dir() / f"mali_layer-{_build_key(compiler, source)}.so"
    if force or not target.is_file():
        _compile(compiler, target)
    _built = target
    return target


def _find_compiler() -> str:
    for name in ("cc", "gcc"):
        path = shutil.which(name)
        if path:
            return path
    raise LayerBuildError(f"no C compiler (cc or gcc) on PATH to build the mali-hil OpenCL layer: {INSTALL_HINT}")


def _check_headers() -> None:
    missing = [h for h in REQUIRED_HEADERS if not (INCLUDE_DIR / h).is_file()]
    if missing:
        raise LayerBuildError(
            f"OpenCL headers {', '.join(str(INCLUDE_DIR / h) for h in missing)} are missing, so the mali-hil "
            f"layer cannot be built: {INSTALL_HINT}"
        )


def _build_key(compiler: str, source: bytes) -> str:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    digest = hashlib.sha256(source + "\0".join((compiler, version, *FLAGS)).encode())
    return digest.hexdigest()[:16]


def _cache_dir() -> Path:
    from mali_hil.emulator.board import cache_dir  # board imports this module lazily; keep the cycle one-way at import

    return cache_dir()


def _compile(compiler: str, target: Path) -> None:
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f"{target.name}.", suffix=".tmp")  # unique per builder
    os.close(fd)
    tmp = Path(name)
    cmd = [compiler, *FLAGS, str(SOURCE), "-o", str(tmp)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise LayerBuildError(
            f"compiling the mali-hil OpenCL layer failed ({' '.join(cmd)}):\n{result.stderr.strip() or result.stdout}"
        )
    tmp.replace(target)  # atomic: a concurrent builder or loader sees the old file or the new one, never half
