"""Generated test checkpoints, kept between runs and shared between processes, by what they were made from.

The suite makes the same checkpoints every run (seeded values, fixed shapes): up to 1.7 GB of writes per run, and
twice that when two xdist workers each make their own. Each is stored once under
``$XDG_CACHE_HOME/mali-hil/suite-checkpoints/<key>/``, where the key hashes everything the bytes depend on: the
generator's name and parameters, the source of the modules that write them, and the versions of numpy, ml_dtypes
and safetensors. A change to any of those makes a new key, never a stale hit.

Made in a temporary folder beside the cache and renamed into place (atomic), so a concurrent maker or a killed
run leaves either nothing or a whole checkpoint. The folder must be ours and not writable by others (as for the
layer build): a checkpoint planted there would change verdicts, so a folder that fails the check is not used and
checkpoints are made in the caller's temporary folder instead (the same bytes; only the reuse is lost). Entries
unused for ``MAX_AGE_DAYS`` are removed when a new one is stored.

The same store keeps ``mali-hil cluster``'s model-shaped checkpoints, in a folder of their own (``root``), keyed by
their content alone and never pruned (16 GB is not remade lightly).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

MAX_AGE_DAYS = 7
_DEPENDENCIES = ("numpy", "ml_dtypes", "safetensors")


def cache_root() -> Path | None:
    """The checkpoint cache folder, created private; None when it exists but is not safely ours."""
    from mali_hil.paths import cache_dir

    root = cache_dir() / "suite-checkpoints"
    try:
        root.mkdir(mode=0o700, exist_ok=True)
        info = root.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        return None
    return root


def source_fingerprint(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _generator_sources() -> list[Path]:
    return sorted(Path(__file__).parent.glob("*.py"))


def _versions() -> dict[str, str]:
    found = {}
    for name in _DEPENDENCIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "?"
    return found


def cache_key(kind: str, params: Mapping[str, Any], sources: Iterable[Path] = ()) -> str:
    """The key of a checkpoint made by ``kind`` with ``params``, by the checkpoint modules and ``sources``."""
    text = json.dumps(
        {
            "kind": kind,
            "params": params,
            "code": source_fingerprint([*_generator_sources(), *sources]),
            "versions": _versions(),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def lookup(key: str, root: Path | None = None) -> Path | None:
    """The stored checkpoint for ``key`` (marked used), or None; ``root``: another store than the suite's."""
    root = cache_root() if root is None else root
    found = None if root is None else _entry_path(root / key)
    if found is not None:
        os.utime(root / key)  # used: keeps it from being pruned
    return found


def cached_checkpoint(key: str, name: str, make: Callable[[Path], Path], fallback: Path, root: Path | None = None,
                      max_age_days: float | None = MAX_AGE_DAYS) -> Path:  # fmt: skip
    """The checkpoint ``name`` for ``key``: reused if stored, else made by ``make(path)`` (which returns the path
    to use: the file, or a sharded checkpoint's index) and stored. Without a usable cache it is made under
    ``fallback``. ``root``: another store than the suite's (made if missing); ``max_age_days`` None: never pruned."""
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    root = cache_root() if root is None else root
    if root is None:
        return make(fallback / name)
    entry = root / key
    found = lookup(key, root)
    if found is not None:
        return found
    building = Path(tempfile.mkdtemp(prefix=".making-", dir=root))
    try:
        made = make(building / name)
        for path in building.rglob("*"):
            if path.is_file():
                path.chmod(0o444)  # shared by every later run: nobody writes into it by mistake
        (building / "path").write_text(str(made.relative_to(building)), encoding="utf-8")
        with contextlib.suppress(OSError):  # fails when another process stored it first: then theirs is used
            building.rename(entry)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    if max_age_days is not None:
        _prune(root, keep=entry, max_age_days=max_age_days)
    found = _entry_path(entry)
    if found is None:  # pragma: no cover - a rename that neither happened nor failed
        return make(fallback / name)
    return found


def _entry_path(entry: Path) -> Path | None:
    """A stored entry's checkpoint path, or None when there is no complete entry."""
    try:
        relative = (entry / "path").read_text(encoding="utf-8")
    except OSError:
        return None
    path = entry / relative
    return path if path.exists() else None


def _prune(root: Path, keep: Path, max_age_days: float) -> None:
    cutoff = time.time() - max_age_days * 86400
    for entry in root.iterdir():
        try:
            stale = entry != keep and entry.lstat().st_mtime < cutoff
        except OSError:
            continue
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
