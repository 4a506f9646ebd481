"""Where mali-hil keeps what it makes on a machine: one cache folder, private to its user."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mali_hil.errors import LayerCacheError


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/mali-hil`` (default ``~/.cache/mali-hil``): where the layer and its configs are kept.

    Every job loads code from here, so it must be the user's own: a folder owned by this user, not a symlink,
    writable by no one else. A shared or world-writable cache (a shared ``XDG_CACHE_HOME``) is refused, not used.
    """
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    path = Path(base) / "mali-hil"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(path)
    except OSError as exc:
        raise LayerCacheError(f"cannot make the layer cache {path}: {exc.strerror or exc}") from None
    fix = "remove it, or set XDG_CACHE_HOME to a folder of your own"
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise LayerCacheError(f"refusing the layer cache {path}: it is a symlink or not a folder; {fix}")
    if info.st_uid != os.geteuid():
        raise LayerCacheError(f"refusing the layer cache {path}: it belongs to uid {info.st_uid}, not to you "
                              f"({os.geteuid()}), and every job would load code from it; {fix}")  # fmt: skip
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise LayerCacheError(f"refusing the layer cache {path}: it is writable by others (mode "
                              f"{stat.S_IMODE(info.st_mode):o}), so anyone could plant the layer every job loads; "
                              f"run `chmod go-w {path}`, or set XDG_CACHE_HOME to a folder of your own")  # fmt: skip
    return path
