"""Where mali-hil keeps what it makes on a machine: one cache folder, private to its user, and the one check that
every folder a job loads code from passes (ours, PoCL's kernel cache, tinygrad's kernel database's)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mali_hil.errors import CacheError, LayerCacheError


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/mali-hil`` (default ``~/.cache/mali-hil``): where the layer and its configs are kept.

    Every job loads code from here, so it must be the user's own: a folder owned by this user, not a symlink,
    writable by no one else. A shared or world-writable cache (a shared ``XDG_CACHE_HOME``) is refused, not used.
    """
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return private_dir(Path(base) / "mali-hil", "the layer cache", "XDG_CACHE_HOME", LayerCacheError)


def private_dir(path: Path, what: str, variable: str, error: type[CacheError] = CacheError) -> Path:
    """``path``, made (mode 700) if missing, when it is a folder of this user's that no one else can write to;
    ``error`` otherwise, naming ``what`` it is and the ``variable`` that moves it. Refused rather than replaced by
    another folder: a silent move would hide that someone else could write there (and lose the cache)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(path)
    except OSError as exc:
        raise error(f"cannot make {what} {path}: {exc.strerror or exc}") from None
    fix = f"remove it, or set {variable} to a folder of your own"
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise error(f"refusing {what} {path}: it is a symlink or not a folder; {fix}")
    if info.st_uid != os.geteuid():
        raise error(f"refusing {what} {path}: it belongs to uid {info.st_uid}, not to you ({os.geteuid()}), and "
                    f"every job would load code from it; {fix}")  # fmt: skip
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise error(f"refusing {what} {path}: it is writable by others (mode {stat.S_IMODE(info.st_mode):o}), so "
                    f"anyone could plant code every job loads; run `chmod go-w {path}`, or set {variable} to a "
                    "folder of your own")  # fmt: skip
    return path
