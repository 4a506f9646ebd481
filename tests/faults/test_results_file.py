"""Point 13 of issue 8: a full disk or an unwritable results path loses nothing and stops at once.

Before: with a full disk every job ran, every test then failed with ENOSPC and the file kept a truncated line;
a read-only or missing results folder failed every test after its job had run; runs appended to one file could
not be told apart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mali_hil.errors import ResultsFileError
from mali_hil.harness.records.results_file import ResultsFile

pytest_plugins = ["pytester"]
RECORD = {"test": "t::x", "status": "ok", "payload": "y" * 700}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real full disk: a 64 KiB tmpfs (needs root and mount rights; skipped elsewhere)."""
    where = tmp_path / "disk"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_leaves_only_whole_records_and_names_the_path(small_disk: Path) -> None:
    path = small_disk / "results.jsonl"
    results = ResultsFile(path, run="run-a")
    written = 0
    with pytest.raises(ResultsFileError, match=f"{path}.*No space left on device"):
        for _ in range(1000):
            results.write({**RECORD, "n": written})
            written += 1
    results.close()
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"", "the file ends inside a record"
    records = [json.loads(line) for line in lines[:-1]]
    assert [r["n"] for r in records] == list(range(written)) and written > 10
    assert {r["run"] for r in records} == {"run-a"}


def test_dev_full_is_a_typed_error() -> None:
    results = ResultsFile("/dev/full")
    with pytest.raises(ResultsFileError, match="/dev/full"):
        results.write(RECORD)


def test_runs_appended_to_one_file_stay_apart(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    for run in ("one", "two"):
        results = ResultsFile(path, run=run)
        results.write(RECORD)
        results.close()
    assert [json.loads(line)["run"] for line in path.read_text().splitlines()] == ["one", "two"]


@pytest.mark.parametrize("where", ["missing/r.jsonl", "readonly/r.jsonl", "."])
def test_an_unwritable_results_path_stops_pytest_before_any_job(
    pytester: pytest.Pytester, tmp_path: Path, where: str
) -> None:
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    if where.startswith("readonly"):
        subprocess.run(["mount", "--bind", "-o", "ro", str(readonly), str(readonly)], check=False)
        if os.access(readonly, os.W_OK) and os.statvfs(readonly).f_flag & os.ST_RDONLY == 0:
            readonly.chmod(0o500)
    pytester.makepyfile(test_user="def test_x(load):\n    raise AssertionError('must not run')\n")
    try:
        result = pytester.runpytest("--device=local", f"--mali-hil-results={tmp_path / where}")
    finally:
        subprocess.run(["umount", str(readonly)], check=False, capture_output=True)
        readonly.chmod(0o700)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--mali-hil-results:*"])


def test_a_results_file_that_fills_up_stops_the_run_after_that_test(pytester: pytest.Pytester, tiny: Path) -> None:
    pytester.makepyfile(
        test_user=f"""
        def test_first(load):
            assert load({str(tiny)!r}, loader="chunked").ok

        def test_second(load):
            raise AssertionError("must not run: results are being lost")
        """
    )
    result = pytester.runpytest_subprocess("--device=local", "--mali-hil-results=/dev/full", "-p", "no:randomly")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*mali-hil: cannot write a result record to /dev/full*"])


def test_mali_hil_run_refuses_unwritable_outputs_at_once(tmp_path: Path) -> None:
    for option in ("--junitxml", "--results"):
        done = subprocess.run([sys.executable, "-m", "mali_hil.harness.cli", "run", option, "/proc/x"],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 2 and f"mali-hil: error: {option} /proc/x is not writable" in done.stderr
