"""Compile the OpenCL layer (``emulator/layer/``: ``mali_layer.c`` and the parts it includes) once per source and
compiler, and cache the .so.

The cache name carries a hash of the source, the flags and the compiler's version, so an edit or a compiler
upgrade gives a new file and an old one is never reused by mistake. Builders take turns (a lock file in the cache):
the second finds the first's build and keeps it, so no process has its loaded layer replaced under it. Each
compiles to its own temporary name and renames it into place, and rename is atomic.

Every job loads this file, so it is checked by content before use: the build records the .so's SHA-256 beside
it (``.so.sha256``), and a file that does not match (truncated, replaced) is rebuilt, never loaded. The cache
folder itself must be private to the user (``board.cache_dir`` refuses one that others can write).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mali_hil.errors import LayerBuildError

SOURCE = Path(__file__).parent / "layer" / "mali_layer.c"
INCLUDE_DIR = Path("/usr/include")
REQUIRED_HEADERS = ("CL/cl_layer.h", "CL/cl_icd.h")
FLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-pthread", "-fvisibility=hidden", f"-I{INCLUDE_DIR}")
INSTALL_HINT = "apt-get install gcc opencl-c-headers"

_built: Path | None = None


def layer_path() -> Path:
    """The compiled layer, built on first use and checked by content each time (``OPENCL_LAYERS`` names it)."""
    return _built if _built is not None and verified(_built) else build_layer()


def build_layer(force: bool = False) -> Path:
    """Compile the layer unless an up-to-date build that matches its recorded hash is cached; ``force``
    recompiles anyway."""
    global _built
    compiler = _find_compiler()
    _check_headers()
    target = _cache_dir() / f"mali_layer-{_build_key(compiler, _sources())}.so"
    if force or not verified(target):
        with _build_lock(target):
            # another builder may have finished while we waited: replacing its file would swap the layer under
            # every process that has it loaded (their maps then say "(deleted)" and the counters are lost)
            if force or not verified(target):
                _compile(compiler, target)
    _built = target
    return target


@contextlib.contextmanager
def _build_lock(target: Path) -> Iterator[None]:
    """One builder at a time per cache (pytest-xdist's processes, boards started side by side)."""
    fd = os.open(target.with_name(".build.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def hash_path(layer: Path) -> Path:
    """Where the build recorded the layer's SHA-256."""
    return layer.with_name(layer.name + ".sha256")


def verified(layer: Path) -> bool:
    """Whether ``layer`` is a regular file (not a symlink) whose content is what its build recorded."""
    try:
        recorded = _read_no_follow(hash_path(layer)).decode("ascii").strip()
        return hashlib.sha256(_read_no_follow(layer)).hexdigest() == recorded
    except (OSError, UnicodeDecodeError):
        return False


def _read_no_follow(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


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


def _sources() -> bytes:
    """Every C file beside SOURCE (the parts it includes), named, in a fixed order: an edit to any part is a new
    build."""
    parts = sorted(SOURCE.parent.glob("*.c"))
    return b"".join(p.name.encode() + b"\0" + p.read_bytes() + b"\0" for p in parts)


def _build_key(compiler: str, source: bytes) -> str:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    digest = hashlib.sha256(source + "\0".join((compiler, version, *FLAGS)).encode())
    return digest.hexdigest()[:16]


def _cache_dir() -> Path:
    from mali_hil.paths import cache_dir

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
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    tmp.replace(target)  # atomic: a concurrent builder or loader sees the old file or the new one, never half
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f"{hash_path(target).name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(digest + "\n")
    os.replace(name, hash_path(target))  # after the .so: a racing builder's mismatch only causes a rebuild
