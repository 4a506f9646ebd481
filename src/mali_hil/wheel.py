"""A wheel of the running mali-hil, to ship to a board: what the harness runs is what the board runs.

Built from the importable packages themselves (an editable checkout or an installed wheel alike) and the
installed distribution's metadata, so no build backend, network or source tree is needed. The wheel's name
carries a hash of its content: a board keeps one venv per hash, and reinstalls only when the code changed.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from importlib import import_module
from importlib.metadata import distribution
from pathlib import Path

from mali_hil.errors import MaliHilError

DISTRIBUTION = "mali-hil"
#: the import packages the distribution maps (see pyproject's package-dir); subpackages come with their folders
TOP_PACKAGES = ("mali_hil", "mali_hil.runtime", "mali_hil.emulator", "mali_hil.harness", "mali_hil.properties")
_SUFFIXES = (".py", ".toml", ".c")
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # same content, same bytes: the hash names the content, not the build time


def _package_files() -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for name in TOP_PACKAGES:
        package = import_module(name)
        root = Path(next(iter(package.__path__)))
        prefix = name.replace(".", "/")
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if "__pycache__" in relative.parts or not path.is_file() or path.suffix not in _SUFFIXES:
                continue
            files[f"{prefix}/{relative.as_posix()}"] = path.read_bytes()
    return files


def _metadata_files(version: str) -> dict[str, bytes]:
    dist = distribution(DISTRIBUTION)
    info = f"mali_hil-{version}.dist-info"
    metadata = dist.read_text("METADATA") or dist.read_text("PKG-INFO")  # a wheel's or a source tree's egg-info
    if not metadata:
        raise MaliHilError("mali-hil's installed metadata is missing: reinstall mali-hil")
    files = {f"{info}/METADATA": metadata.encode()}
    entry_points = dist.read_text("entry_points.txt")
    if entry_points:
        files[f"{info}/entry_points.txt"] = entry_points.encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: mali-hil\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    return files


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_running_wheel(out_dir: Path) -> Path:
    """Write ``mali_hil-VERSION+hHASH-py3-none-any.whl`` of the running code into ``out_dir``; returns its path."""
    version = distribution(DISTRIBUTION).version
    files = _package_files()
    content = hashlib.sha256()
    for name in sorted(files):
        content.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    local = f"{version}+h{content.hexdigest()[:12]}" if "+" not in version else version
    files.update(_metadata_files(local))
    files = {name.replace(f"mali_hil-{version}.dist-info", f"mali_hil-{local}.dist-info"): data
             for name, data in files.items()}  # fmt: skip
    meta = f"mali_hil-{local}.dist-info/METADATA"
    files[meta] = _set_version(files[meta], local)
    record = f"mali_hil-{local}.dist-info/RECORD"
    lines = [_record_line(name, data) for name, data in sorted(files.items())] + [f"{record},,"]
    files[record] = ("\n".join(lines) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in sorted(files.items()):
            info = zipfile.ZipInfo(name, _FIXED_TIME)
            info.external_attr = 0o644 << 16
            wheel.writestr(info, data, zipfile.ZIP_DEFLATED)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"mali_hil-{local}-py3-none-any.whl"
    if not target.exists() or target.read_bytes() != buffer.getvalue():
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(buffer.getvalue())
        tmp.replace(target)
    return target


def _set_version(metadata: bytes, version: str) -> bytes:
    lines = metadata.decode().split("\n")
    lines = [f"Version: {version}" if line.startswith("Version: ") else line for line in lines]
    return "\n".join(lines).encode()
