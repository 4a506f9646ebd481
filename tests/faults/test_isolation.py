"""Point 8 of issue 8: workers do not import code from the current folder.

Before: the worker ran ``python -m`` with the current folder first on ``sys.path``, so a ``./base64.py`` there
was imported in place of the standard library's (the worker itself imports base64). Now workers run with
``python -P``; users' loader folders are named in MALI_HIL_LOADER_PATH and searched last.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mali_hil.harness.devices import make_device
from mali_hil.harness.records.jobs import LoadJob
from mali_hil.harness.records.results import Status

PLANTED = """
import os
open(os.environ["MALI_HIL_TEST_MARKER"], "w").write("imported from the current folder")
raise ImportError("planted")
"""
LOADER = """
from mali_hil.harness.loaders import get_loader


def load(checkpoint, device, options):
    return get_loader("chunked").load(checkpoint, device, options)
"""


@pytest.fixture
def hostile_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cwd"
    folder.mkdir()
    (folder / "base64.py").write_text(PLANTED)
    (folder / "users_loader.py").write_text(LOADER)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MALI_HIL_TEST_MARKER", str(tmp_path / "marker"))
    return folder


def test_a_worker_imports_nothing_from_the_current_folder(
    hostile_folder: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MALI_HIL_LOADER_PATH", raising=False)
    with make_device("local") as device:
        plain = device.run(LoadJob(checkpoint=str(tiny), loader="chunked"))
        users = device.run(LoadJob(checkpoint=str(tiny), loader="users_loader:load"))
    assert not (hostile_folder.parent / "marker").exists(), "./base64.py was imported by the worker"
    assert plain.status is Status.OK, plain.error_message
    assert users.status is Status.ERROR and "MALI_HIL_LOADER_PATH" in (users.error_message or "")


def test_a_loader_folder_is_searched_last(hostile_folder: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALI_HIL_LOADER_PATH", os.pathsep.join([str(hostile_folder), "/nonexistent"]))
    with make_device("local") as device:
        users = device.run(LoadJob(checkpoint=str(tiny), loader="users_loader:load"))
    assert users.status is Status.OK, users.error_message
    assert not (hostile_folder.parent / "marker").exists(), "a loader folder shadowed the standard library"
