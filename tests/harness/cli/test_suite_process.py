"""Point 5 of issue 25: `mali-hil run` runs the real suite whatever the current folder holds, and a run that
tested nothing fails. (Its signals, point 7, are tested with the other interrupts in test_cli.py.)

Before: in a folder holding a ``pytest.py``, `mali-hil run` ran that file instead of pytest: exit 0, no test
run, no JUnit file; a ``./json.py`` crashed the child's xdist workers.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mali_hil.errors import MaliHilError
from mali_hil.harness.cli.suite_process import EXIT_NO_TESTS, check_tests_ran


def test_a_folder_with_pytest_py_and_json_py_runs_the_real_suite_and_nothing_selected_fails(tmp_path: Path) -> None:
    (tmp_path / "pytest.py").write_text("print('planted pytest'); raise SystemExit(0)\n")
    (tmp_path / "json.py").write_text("raise SystemExit('planted json')\n")
    junit = tmp_path / "junit.xml"
    # the installed command, as a user runs it (``python -m`` would put the folder on this process's own path).
    # One test process: 10 s, not 35 (pytest-xdist's workers, which imported ./json.py too, inherit
    # PYTHONSAFEPATH; checked by hand with the default two)
    mali_hil = shutil.which("mali-hil", path=str(Path(sys.executable).parent))
    assert mali_hil is not None
    done = subprocess.run([mali_hil, "run", "--workers", "1", "--junitxml", str(junit), "--", "-k", "no_such_test"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=180)  # fmt: skip
    output = done.stdout + done.stderr
    assert "planted" not in output, output[-3000:]
    assert done.returncode == EXIT_NO_TESTS and "deselected" in output, (done.returncode, output[-3000:])
    assert junit.is_file()  # pytest wrote it: the suite's own pytest ran, and selected nothing


def _junit(tmp_path: Path, tests: int, skipped: int) -> Path:
    """A report as pytest writes it (its <testsuites> root, the counts as attributes of each <testsuite>)."""
    junit = tmp_path / "junit.xml"
    junit.write_text(f'<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" '
                     f'failures="0" skipped="{skipped}" tests="{tests}" time="0.1"></testsuite></testsuites>')
    return junit


@pytest.mark.parametrize(("tests", "skipped", "code"), [(0, 0, EXIT_NO_TESTS), (2, 2, EXIT_NO_TESTS), (2, 1, 0)])
def test_a_suite_that_ran_nothing_or_skipped_everything_fails(tmp_path: Path, tests: int, skipped: int,
                                                               code: int) -> None:  # fmt: skip
    assert check_tests_ran(_junit(tmp_path, tests, skipped), asked=True) == code


def test_a_success_without_a_junit_report_is_no_verdict(tmp_path: Path) -> None:
    with pytest.raises(MaliHilError, match="wrote no JUnit report at"):
        check_tests_ran(tmp_path / "missing.xml", asked=True)
    (tmp_path / "cut.xml").write_text("<testsuites><testsuite tests='3'")
    with pytest.raises(MaliHilError, match="cannot be read"):
        check_tests_ran(tmp_path / "cut.xml", asked=True)
