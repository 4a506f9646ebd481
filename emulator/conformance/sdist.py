"""An external suite's tests, from the sdist of the version this environment has installed.

The sdist comes from the package index's simple page (PEP 691 JSON; ``pip download --no-binary`` would try to
build the package's metadata, which needs its build backend), is checked against the index's SHA-256, and is
kept, unpacked, under ``~/.cache/mali-hil/suites/``, so CI fetches each version once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import ssl
import tarfile
import tempfile
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any

from mali_hil.emulator.emulated_board import cache_dir
from mali_hil.errors import BackendError

DEFAULT_INDEX = "https://pypi.org/simple"
_JSON = "application/vnd.pypi.simple.v1+json"
_TIMEOUT = 120.0


class SuiteFetchError(BackendError):
    """The suite's sdist could not be had: no network to the index, no such file, or a hash mismatch."""


def installed_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        raise SuiteFetchError(f"{package} is not installed in this environment: pip install {package}") from None


def unpacked_sdist(package: str, version: str | None = None) -> Path:
    """The folder of ``package``'s sdist (``version``, default the installed one), fetched and unpacked once."""
    version = version or installed_version(package)
    root = cache_dir() / "suites"
    target = root / f"{package}-{version}"
    if (target / ".complete").is_file():
        return target
    root.mkdir(mode=0o700, exist_ok=True)
    archive = _download(package, version, root)
    scratch = Path(tempfile.mkdtemp(dir=root, prefix=f".{package}-"))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(scratch, filter="data")  # no links out, no devices: a published archive, still checked
        (inner,) = [p for p in scratch.iterdir() if p.is_dir()]
        (inner / ".complete").touch()
        shutil.rmtree(target, ignore_errors=True)
        inner.rename(target)
    except (OSError, tarfile.TarError, ValueError) as exc:
        raise SuiteFetchError(f"cannot unpack {archive}: {exc}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _index_url() -> str:
    return (os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX).rstrip("/")


def _open(url: str, accept: str | None = None) -> Any:  # urllib's response
    cafile = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    context = ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    return urllib.request.urlopen(request, timeout=_TIMEOUT, context=context)


def _download(package: str, version: str, root: Path) -> Path:
    index = f"{_index_url()}/{package}/"
    name = f"{package}-{version}.tar.gz"
    try:
        with _open(index, _JSON) as response:
            files = json.load(response)["files"]
    except (OSError, ValueError, KeyError) as exc:
        raise SuiteFetchError(f"cannot read the package index {index}: {exc}") from None
    entry = next((f for f in files if f.get("filename", "").lower() == name.lower()), None)
    if entry is None or "sha256" not in entry.get("hashes", {}):
        raise SuiteFetchError(f"the index {index} has no {name} with a sha256: no sdist of {package} {version}?")
    path = root / name
    digest = hashlib.sha256()
    try:
        with _open(entry["url"]) as response, tempfile.NamedTemporaryFile(dir=root, delete=False) as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except OSError as exc:
        raise SuiteFetchError(f"cannot download {entry['url']}: {exc}") from None
    if digest.hexdigest() != entry["hashes"]["sha256"]:
        os.unlink(out.name)
        raise SuiteFetchError(f"{name} from {entry['url']} does not match the index's sha256: not used")
    os.replace(out.name, path)
    return path
