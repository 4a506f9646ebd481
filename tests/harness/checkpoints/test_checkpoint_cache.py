"""The cache of generated suite checkpoints: made once and reused by key, never half-made, never taken from a folder
that others may write, and keyed by the generator's source."""

from __future__ import annotations

from pathlib import Path

import pytest

from mali_hil.harness.checkpoints import make_checkpoint
from mali_hil.harness.checkpoints.cache import cache_key, cache_root, cached_checkpoint


@pytest.fixture(autouse=True)
def _private_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _maker(calls: list[Path]):
    def make(path: Path) -> Path:
        calls.append(path)
        make_checkpoint("tiny", path)
        return path

    return make


def test_made_once_then_reused_read_only(tmp_path: Path) -> None:
    calls: list[Path] = []
    key = cache_key("test", {"model": "tiny"})
    first = cached_checkpoint(key, "tiny.safetensors", _maker(calls), tmp_path / "fallback")
    again = cached_checkpoint(key, "tiny.safetensors", _maker(calls), tmp_path / "fallback")
    assert first == again and len(calls) == 1
    assert first.is_relative_to(tmp_path / "cache" / "mali-hil" / "suite-checkpoints")
    assert first.stat().st_mode & 0o222 == 0, "a shared checkpoint must not be writable"
    assert [p.name for p in first.parents[1].iterdir()] == [key], "a temporary folder was left behind"


def test_a_failed_make_leaves_nothing(tmp_path: Path) -> None:
    def broken(path: Path) -> Path:
        path.write_bytes(b"half a checkpoint")
        raise RuntimeError("killed mid-write")

    key = cache_key("test", {"model": "broken"})
    with pytest.raises(RuntimeError):
        cached_checkpoint(key, "x.safetensors", broken, tmp_path)
    root = cache_root()
    assert root is not None and list(root.iterdir()) == []


def test_the_key_follows_parameters_and_generator_source(tmp_path: Path) -> None:
    source = tmp_path / "generator.py"
    source.write_text("SEED = 1\n")
    base = cache_key("gen", {"scale": 0.1}, sources=[source])
    assert cache_key("gen", {"scale": 0.2}, sources=[source]) != base
    source.write_text("SEED = 2\n")
    assert cache_key("gen", {"scale": 0.1}, sources=[source]) != base


def test_a_folder_others_may_write_is_not_used(tmp_path: Path) -> None:
    root = tmp_path / "cache" / "mali-hil" / "suite-checkpoints"
    root.mkdir(parents=True)
    root.chmod(0o777)
    calls: list[Path] = []
    made = cached_checkpoint(cache_key("test", {}), "tiny.safetensors", _maker(calls), tmp_path / "fallback")
    assert made == tmp_path / "fallback" / "tiny.safetensors" and calls == [made]
    assert list(root.iterdir()) == []
