"""Points 14 (bad --device on `mali-hil run`) and 15 of issue 8.

Before: on the enqueue-error profile (T860) a loader holding 8 GiB of buffers on a 0.94 GiB device ended ``ok``
with nothing in its record showing the overcommit; a loader's 8 MiB exception message went whole into the
record (200 MiB ones too); each device left a temporary folder behind.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from mali_hil.harness.devices import make_device
from mali_hil.harness.records.jobs import LoadJob
from mali_hil.harness.records.results import Status
from mali_hil.runtime.verdict import MESSAGE_LIMIT

pytest_plugins = ["pytester"]


def test_an_overcommit_on_an_enqueue_error_profile_is_in_the_record(tiny: Path) -> None:
    with make_device("emulated-mali:mali-t860:1GiB") as device:
        loader = "tests.harness.loaders.odd_loaders:hoards_device_memory"
        result = device.run(LoadJob(checkpoint=str(tiny), loader=loader))
    assert result.status is Status.OK, result.error_message  # as on the board: untouched buffers never fail
    assert result.device_cap_bytes is not None and result.device_cap_bytes < 1 << 30
    assert (result.device_overcommitted_bytes or 0) >= 7 << 30  # 256 x 32 MiB asked, under 1 GiB there


def test_huge_messages_are_capped_and_devices_leave_no_temp_folders(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the harness's own temporary files go here
    for _ in range(2):  # a device each time: every worker start makes (and must remove) a private folder
        with make_device("local") as device:
            result = device.run(
                LoadJob(checkpoint=str(tiny), loader="tests.faults.fault_loaders:raises_a_huge_message")
            )
        assert (result.status, result.error_type) == (Status.ERROR, "ValueError")
        message = result.error_message or ""
        assert len(message) <= MESSAGE_LIMIT + 100 and "characters cut" in message
    assert list(tmp_path.iterdir()) == []


def test_mali_hil_run_with_a_bad_device_stops_at_once(tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "mali_hil.harness.cli", "run", "--device=local:junk"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    took = time.monotonic() - started
    assert done.returncode == pytest.ExitCode.USAGE_ERROR and took < 60, (done.returncode, took, done.stdout[-500:])
    assert "'local' takes no options" in done.stderr and "Traceback" not in done.stderr + done.stdout


def test_a_device_target_its_kind_refuses_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user="def test_x(load):\n    raise AssertionError('must not run')\n")
    result = pytester.runpytest("--device=emulated-mali:mali-g999")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--device:*unknown profile 'mali-g999'*"])
