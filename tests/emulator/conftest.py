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
    platform_extensions: tuple[str, ...] = ()
    non_uniform_work_groups: bool = False

    def honours(self, extension: str) -> bool:
        """Whether the layer may advertise a profile's extension on this backend (mirrors emulator/layer/identity.c)."""
        if extension in ("cl_khr_icd", "cl_arm_core_id", "cl_arm_printf"):  # the layer honours these itself
            return True
        if extension == "cl_arm_non_uniform_work_group_size":
            return self.non_uniform_work_groups
        return extension in self.extensions or extension in self.platform_extensions

    @property
    def has_fp16(self) -> bool:
        return "cl_khr_fp16" in self.extensions


@pytest.fixture(scope="session")
def backend() -> Backend:
    from mali_hil.emulator.backend import backend_icd

    run = run_snippet(
        """
        import pyopencl as cl
        platform = cl.get_platforms()[0]
        dev = platform.get_devices()[0]
        emit({"extensions": dev.extensions.split(), "max_alloc": dev.max_mem_alloc_size,
              "platform_extensions": platform.extensions.split(),
              "non_uniform": bool(dev.get_info(cl.device_info.NON_UNIFORM_WORK_GROUP_SUPPORT))})
        """,
        {"OCL_ICD_VENDORS": str(backend_icd()), "OCL_ICD_FILENAMES": ""},  # the PoCL boards run on
    )
    assert run.returncode == 0, run.stderr
    got = run.result
    return Backend(tuple(got["extensions"]), got["max_alloc"], tuple(got["platform_extensions"]), got["non_uniform"])


@pytest.fixture
def stats_file(tmp_path: Path) -> Path:
    return tmp_path / "layer-stats.json"
