"""Shared by the farm's test modules: one board disk, so mali-hil is installed on the loopback boards once."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="package")
def board_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("board-disk")
