"""The progress line of `mali-hil run` and how the run spreads over xdist workers: quiet off a terminal, done/total
and the running loader when drawn, one loader's tests kept in one worker, and the same table, JUnit and result
records whether the suite runs in one process or across two."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from mali_hil.harness.plugin.parallel import loader_of

pytest_plugins = ["pytester"]

LOADERS = ("naive", "fix_bf16-device", "fix_bf16-host", "chunked", "mmap")
USER_TESTS = """
def test_each_loader(loader_name):
    assert loader_name

def test_plain():
    pass
"""


@pytest.mark.parametrize(
    ("nodeid", "loader"),
    [
        ("t.py::test_x[emulated-mali:mali-g610:3GiB-fix_bf16-host]", "fix_bf16-host"),
        ("t.py::test_x[fix_bf16-device]", "fix_bf16-device"),
        ("t.py::test_x[chunked-alloc-error]", "chunked"),
        ("t.py::test_x[mmap_like]", None),  # a parameter that only starts like a loader's name
        ("t.py::test_x", None),
    ],
)
def test_the_loader_is_read_from_the_test_id(nodeid: str, loader: str | None) -> None:
    assert loader_of(nodeid, LOADERS) == loader


def test_quiet_when_not_a_terminal(pytester: pytest.Pytester) -> None:
    """Off a terminal (CI logs, pipes) nothing of the line is written and pytest's own letters stay."""
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "mali_hil.harness.plugin.progress_line", "--loader=chunked", "-q")
    assert result.ret == 0
    out = result.stdout.str()
    assert "mali-hil" not in out and "\x1b[" not in out, out
    result.stdout.fnmatch_lines(["..*", "*2 passed*"])


def test_forced_line_shows_done_of_total_and_the_loader(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess(
        "-p",
        "mali_hil.harness.plugin.progress_line",
        "--mali-hil-progress=on",
        "--loader=chunked",
        "--loader=naive",
        "-q",
        "-o",
        "console_output_style=classic",
    )
    assert result.ret == 0
    out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", result.stdout.str())  # the terminal's control sequences
    assert "3/3" in out and "0/3" in out, out
    assert "loader: chunked" in out and "loader: naive" in out, out
    assert "3 passed" in out, out
    assert "..." not in out.split("3/3")[0], "pytest's letters were written into the line"


def _run(tmp: Path, workers: int) -> tuple[list[str], list[tuple[str, str]], list[tuple[str, str, str]]]:
    """`mali-hil run` of a small selection: (the table's rows without the RAM column, JUnit (test, outcome),
    results (test, loader, status))."""
    junit, results = tmp / f"junit-{workers}.xml", tmp / f"results-{workers}.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "mali_hil.harness.cli", "run", "--workers", str(workers), "--loader", "chunked",
         "--loader", "mmap", "--junitxml", str(junit), "--results", str(results), "--", "-k",
         "test_same_job_twice or test_f32_edge_cases"],
        capture_output=True, text=True, timeout=600, cwd=tmp,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    table = out.split("mali-hil: loader variants")[1].splitlines()[1:5]
    rows = [" | ".join(c.strip() for i, c in enumerate(line.split("|")) if i != 4) for line in table if "|" in line]
    cases = sorted(
        (case.get("name", ""), "failed" if len(case) and case[0].tag in ("failure", "error") else "passed")
        for case in ET.parse(junit).getroot().iter("testcase")
    )
    records = sorted(
        (r["test"], r["loader"], r["status"]) for r in map(json.loads, results.read_text(encoding="utf-8").splitlines())
    )
    return rows, cases, records


def test_xdist_run_reports_what_one_process_does(tmp_path: Path) -> None:
    """Two workers (each loader's tests in one) give the same table rows (the RAM peak aside: it is sampled),
    the same JUnit cases and the same result records as one process; the controller prints the table from
    records that the workers ran."""
    one = _run(tmp_path, 1)
    two = _run(tmp_path, 2)
    assert one[0] and all("pass" in row for row in one[0][1:]), one[0]
    assert two[0] == one[0]
    assert two[1] == one[1] and len(one[1]) == 4
    assert two[2] == one[2] and len(one[2]) >= 6
