"""Fixtures for the emulator tests: what plain PoCL (no layer) says about itself, asked once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.emulator._subprocess import run_snippet


@dataclass(frozen=True)
class Backend:
    """PoCL's own answers, which the layer must build on (fp16) or cannot change (its largest buffer)."""

    extensions: tuple[str, ...]
    max_alloc: int

    @property
    def has_fp16(self) -> bool:
        return "cl_khr_fp16" in self.extensions


@pytest.fixture(scope="session")
def backend() -> Backend:
    run = run_snippet(
        """
        import pyopencl as cl
        dev = cl.get_platforms()[0].get_devices()[0]
        emit({"extensions": dev.extensions.split(), "max_alloc": dev.max_mem_alloc_size})
        """
    )
    assert run.returncode == 0, run.stderr
    return Backend(tuple(run.result["extensions"]), run.result["max_alloc"])


@pytest.fixture
def stats_file(tmp_path: Path) -> Path:
    return tmp_path / "layer-stats.json"
