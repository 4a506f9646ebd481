"""Point 7 of issue 8: the layer every job loads comes only from a private cache and only as it was built.

Before: nothing checked the cache folder's owner or mode (a world-writable XDG_CACHE_HOME let anyone plant the
.so every job loads), the built .so was loaded whatever its content, and the config was written through a
predictable temporary name (``layer-*.conf`` with ``.PID.tmp``) that a planted symlink could redirect.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mali_hil.emulator import build
from mali_hil.emulator.board import EmulatedBoard, cache_dir, layer_config_text, write_layer_config
from mali_hil.emulator.errors import LayerCacheError


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(build, "_built", None)
    return tmp_path / "mali-hil"


def test_a_cache_writable_by_others_is_refused(cache: Path) -> None:
    cache.mkdir(mode=0o700)
    cache.chmod(0o777)
    with pytest.raises(LayerCacheError, match=r"writable by others.*chmod go-w"):
        cache_dir()
    with pytest.raises(LayerCacheError):
        EmulatedBoard.from_spec("mali-g52:256MiB").environ()  # what a worker does to put itself on the board


def test_a_cache_of_another_user_is_refused(cache: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the folder away")
    cache.mkdir(mode=0o700)
    os.chown(cache, 65534, 65534)
    with pytest.raises(LayerCacheError, match="belongs to uid 65534"):
        cache_dir()


def test_a_symlinked_cache_is_refused(cache: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    cache.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(LayerCacheError, match="symlink"):
        cache_dir()


def test_a_new_cache_is_private(cache: Path) -> None:
    assert cache_dir() == cache and cache.stat().st_mode & 0o077 == 0


def test_a_replaced_layer_is_rebuilt_not_loaded(cache: Path) -> None:
    built = build.build_layer()
    good = hashlib.sha256(built.read_bytes()).hexdigest()
    assert built.parent == cache and build.verified(built)
    built.write_bytes(b"\x7fELF planted")  # the same name, other content
    assert not build.verified(built)
    again = build.layer_path()
    assert again == built and hashlib.sha256(again.read_bytes()).hexdigest() == good
    planted = cache / "planted.so"
    planted.write_bytes(b"\x7fELF planted")
    built.unlink()
    built.symlink_to(planted)  # a symlink to other content is not the build either
    assert not build.verified(built)
    assert hashlib.sha256(build.layer_path().read_bytes()).hexdigest() == good


def test_the_config_is_not_written_through_a_planted_name(cache: Path, tmp_path: Path) -> None:
    profile = EmulatedBoard.from_spec("mali-g52:256MiB").profile
    text = layer_config_text(profile)
    cache.mkdir(mode=0o700)
    target = cache / f"layer-{profile.key}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.conf"
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    target.with_suffix(f".{os.getpid()}.tmp").symlink_to(victim)  # the old, predictable temporary name
    assert write_layer_config(profile) == target
    assert victim.read_text() == "keep me" and target.read_text() == text and not target.is_symlink()
