"""Our own test suite names misbehaving loaders by module path (``tests.harness.loaders.odd_loaders:NAME``). Workers run
with ``python -P`` and do not search the current folder, so the checkout is named as a loader folder, as a user
would name theirs (README: "Your own loader")."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("MALI_HIL_LOADER_PATH", str(Path(__file__).resolve().parents[1]))


@pytest.fixture(scope="session")
def board_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The work folder the loopback sshd boards share, as boards of one machine share a disk: mali-hil's venv is
    installed there once per session (a minute), whichever module's board comes first."""
    return tmp_path_factory.mktemp("board-disk")

