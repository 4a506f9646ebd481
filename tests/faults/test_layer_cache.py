"""Point 7 of issue 8: the layer every job loads comes only from a private cache and only as it was built.

Before: nothing checked the cache folder's owner or mode (a world-writable XDG_CACHE_HOME let anyone plant the
.so every job loads), the built .so was loaded whatever its content, and the config was written through a
predictable temporary name (``layer-*.conf`` with ``.PID.tmp``) that a planted symlink could redirect.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mali_hil.emulator import build
from mali_hil.emulator.emulated_board import EmulatedBoard, layer_config_text, write_layer_config
from mali_hil.errors import LayerCacheError
from mali_hil.paths import cache_dir


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


def test_a_builder_that_waited_keeps_the_build_it_waited_for(cache: Path) -> None:
    """Seen in a cold `mali-hil run --workers 2`: two builders raced, the second replaced the first's .so under
    the workers that had loaded it, and their device figures were silently lost (three tests skipped)."""
    import fcntl
    import threading

    layer = build.build_layer()
    inode = layer.stat().st_ino
    recorded = build.hash_path(layer).read_bytes()
    build.hash_path(layer).unlink()  # as a second builder sees it while the first is still compiling
    fd = os.open(layer.with_name(".build.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # the first builder holds the lock
    second = threading.Thread(target=build.build_layer)
    second.start()
    second.join(1.0)
    assert second.is_alive(), "the second builder did not wait for the first"
    build.hash_path(layer).write_bytes(recorded)  # the first builder finishes
    os.close(fd)
    second.join(60)
    assert not second.is_alive()
    assert layer.stat().st_ino == inode, "the second builder replaced the first's layer"


def test_counters_are_read_from_the_loaded_layer_after_its_file_was_replaced(cache: Path, tmp_path: Path) -> None:
    done = _on_a_board(
        tmp_path,
        "import os, shutil, pyopencl as cl\n"
        "from mali_hil.runtime.layer_stats import _loaded_layer_path, read_layer_stats\n"
        "ctx = cl.Context(cl.get_platforms()[0].get_devices())\n"
        "held = cl.Buffer(ctx, cl.mem_flags.READ_WRITE, 3 << 20)\n"
        "path = _loaded_layer_path()\n"
        "shutil.copyfile(path, path + '.new'); os.replace(path + '.new', path)  # a rebuild, same content\n"
        "print(read_layer_stats().live_bytes)\n",
        {**os.environ, "PYOPENCL_NO_CACHE": "1"},
    )
    assert done.stdout.split()[-1] == str(3 << 20), done.stdout


def _on_a_board(tmp_path: Path, source: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``source`` run with `mali-hil emulator run` on a 512 MiB G52, as a user runs it; it must succeed."""
    script = tmp_path / "job.py"
    script.write_text(source, encoding="utf-8")
    mali_hil = shutil.which("mali-hil", path=str(Path(sys.executable).parent))
    assert mali_hil is not None
    done = subprocess.run([mali_hil, "emulator", "run", "mali-g52:512MiB", "--", sys.executable, str(script)],
                          capture_output=True, text=True, timeout=180, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_pocl_compiles_into_our_private_cache_not_a_planted_one(cache: Path, tmp_path: Path) -> None:
    """Point 6 of issue 25. Before: PoCL kept its kernels in ``$XDG_CACHE_HOME/pocl`` even when that folder was
    another user's and world-writable, so kernels planted there ran in the next job as the harness's user."""
    planted = tmp_path / "pocl"
    planted.mkdir()
    planted.chmod(0o777)  # as a shared XDG_CACHE_HOME leaves it for anyone
    _on_a_board(
        tmp_path,
        "import pyopencl as cl\n"
        "ctx = cl.Context(cl.get_platforms()[0].get_devices())\n"
        "cl.Program(ctx, '__kernel void twice(__global float *x) { x[get_global_id(0)] *= 2.0f; }').build()\n",
        {key: value for key, value in os.environ.items() if key not in ("POCL_CACHE_DIR", "CACHEDB")},
    )
    assert list(planted.rglob("*")) == [], "PoCL wrote its kernels into the world-writable XDG cache"
    ours = cache / "pocl"
    assert [p for p in ours.rglob("*") if p.is_file()], "PoCL's kernel cache is not in mali-hil's private cache"
    assert ours.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("variable", ["POCL_CACHE_DIR", "CACHEDB"])
def test_a_kernel_cache_others_can_write_is_refused(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    from mali_hil.errors import CacheError

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv(variable, str(shared if variable == "POCL_CACHE_DIR" else shared / "cache.db"))
    with pytest.raises(CacheError, match=rf"writable by others.*{variable}"):
        EmulatedBoard.from_spec("mali-g52:256MiB").environ()
    shared.chmod(0o700)  # the user's own: kept
    assert EmulatedBoard.from_spec("mali-g52:256MiB").environ()[variable].startswith(str(shared))
