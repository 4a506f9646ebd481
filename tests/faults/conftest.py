"""Fixtures of the fault suite: a tiny checkpoint, and a local device whose workers write their children's pids."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mali_hil.harness.checkpoints import make_checkpoint


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("faults-ck") / "tiny.safetensors"
    make_checkpoint("tiny", path, fill="special")
    return path


@pytest.fixture
def pidfile(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "pids"
    path.touch()
    yield path
