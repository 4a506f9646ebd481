"""Runs an external suite's tests from its sdist, with the venv's pytest, on plain PoCL or on an emulated board.

Each session logs every test as it starts and ends (``pytest_plugin``); a session that dies mid-test (a crash, an
OOM kill, a timeout) marks the test that was running ``crash``, ``oom`` or ``timeout`` and a new session runs the
rest, as deqp-runner does, so one test cannot hide the outcome of the others.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mali_hil.emulator.conformance.pytest_plugin import DESELECT_ENV, FRACTION_ENV, LOG_ENV, REWRITES_ENV
from mali_hil.emulator.conformance.sdist import unpacked_sdist

PLAIN = "plain-pocl"  # the target name of the bare backend, without the layer
MAX_SESSIONS = 12  # a session per death: past this many the rest are reported missing
OUTCOMES = ("pass", "fail", "error", "skip", "xfail", "xpass", "crash", "oom", "timeout")


@dataclass(frozen=True)
class Suite:
    """An external suite: which package's sdist, which test files in it, and the environment they need."""

    name: str
    package: str
    folder: str  # inside the sdist: where pytest runs (the suite's conftest and relative paths)
    files: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    session_timeout: float = 1800.0  # seconds; one session, on a loaded 2-core machine
    # (regex, replacement) over test ids, so one test has one id on every target: pyopencl names the device in
    # each test's parameters
    id_rewrites: tuple[tuple[str, str], ...] = ()

    def test_id(self, nodeid: str) -> str:
        for pattern, replacement in self.id_rewrites:
            nodeid = re.sub(pattern, replacement, nodeid)
        return f"{self.name}::{nodeid}"


SUITES = {
    suite.name: suite
    for suite in (
        Suite("pyopencl", "pyopencl", "test", ("test_wrapper.py", "test_array.py", "test_enqueue_copy.py",
              "test_clmath.py", "test_algorithm.py", "test_arrays_in_structs.py", "test_clrandom.py"),
              id_rewrites=((r"<context factory for <pyopencl\.Device '[^']*' on '[^']*'[^>]*>>", "ctx"),)),
        Suite("tinygrad", "tinygrad", "test", ("test_tiny.py",), env=(("DEV", "CL"),)),
    )
}  # fmt: skip


@dataclass
class SuiteRun:
    """One suite on one target: each test id (``suite::nodeid``) with its outcome."""

    suite: str
    target: str
    outcomes: dict[str, str] = field(default_factory=dict)
    sessions: int = 0
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        counted = dict.fromkeys(OUTCOMES, 0)
        for outcome in self.outcomes.values():
            counted[outcome] = counted.get(outcome, 0) + 1
        return {k: v for k, v in counted.items() if v}


def run_suite(suite: Suite, target: str, fraction: tuple[int, int] = (1, 1),
              deselect: frozenset[str] = frozenset(), folder: Path | None = None) -> SuiteRun:  # fmt: skip
    """Run ``suite`` on ``target`` (PLAIN or a board spec such as ``mali-g52:1GiB``); ``deselect`` holds test ids
    (``suite::nodeid``) to leave out, e.g. the slow ones a quick run leaves to the nightly. ``folder`` replaces the
    sdist's test folder (a suite of one's own)."""
    folder = folder or unpacked_sdist(suite.package) / suite.folder
    result = SuiteRun(suite.name, target)
    started = time.monotonic()
    prefix = f"{suite.name}::"  # the slow list names tests by their ids, which the plugin also tries
    with tempfile.TemporaryDirectory(prefix="mali-hil-suite-") as scratch:
        log, done_file = Path(scratch) / "log.jsonl", Path(scratch) / "done.txt"
        skip = {test.removeprefix(prefix) for test in deselect if test.startswith(prefix)}
        while result.sessions < MAX_SESSIONS:
            done_file.write_text("".join(f"{nodeid}\n" for nodeid in sorted(skip)), encoding="utf-8")
            log.write_text("", encoding="utf-8")
            env = {**dict(suite.env), LOG_ENV: str(log), DESELECT_ENV: str(done_file),
                   FRACTION_ENV: f"{fraction[0]}/{fraction[1]}",
                   REWRITES_ENV: json.dumps(suite.id_rewrites)}  # fmt: skip
            ending = _session(suite, folder, target, env)
            result.sessions += 1
            running = None
            for line in log.read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                if "start" in record:
                    running = record["start"]
                else:
                    result.outcomes[suite.test_id(record["id"])] = record["outcome"]
                    skip.add(record["id"])
                    running = None
            if ending is None or running is None:  # the session ended by itself: every selected test ran
                break
            result.outcomes[suite.test_id(running)] = ending
            skip.add(running)
    result.seconds = time.monotonic() - started
    return result


def _session(suite: Suite, folder: Path, target: str, env: dict[str, str]) -> str | None:
    """One pytest session; None if it ended by itself, else how it died (an outcome for the running test)."""
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-p",
            "mali_hil.emulator.conformance.pytest_plugin", "-o", "addopts=", "--rootdir", str(folder),
            *suite.files]  # fmt: skip
    if target == PLAIN:
        return _plain_session(argv, folder, env, suite.session_timeout)
    from mali_hil.emulator.emulated_board import EmulatedBoard
    from mali_hil.emulator.launcher import RunStatus, run_on_board

    run = run_on_board(EmulatedBoard.from_spec(target), argv, timeout=suite.session_timeout, env=env, cwd=folder,
                       capture_output=True)  # fmt: skip
    if run.status is RunStatus.OOM_KILLED:
        return "oom"
    if run.status is RunStatus.TIMEOUT:
        return "timeout"
    return "crash" if run.returncode < 0 else None


def _plain_session(argv: list[str], folder: Path, env: dict[str, str], timeout: float) -> str | None:
    from mali_hil.emulator.backend import backend_icd
    from mali_hil.emulator.emulated_board import CONFIG_ENV, LAYERS_ENV, STATS_FILE_ENV

    bare = {k: v for k, v in os.environ.items() if k not in (LAYERS_ENV, CONFIG_ENV, STATS_FILE_ENV)}
    bare |= env | {"OCL_ICD_VENDORS": str(backend_icd()), "OCL_ICD_FILENAMES": ""}  # the backend boards run on
    session = subprocess.Popen(argv, cwd=folder, env=bare, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # fmt: skip
    try:
        returncode = session.wait(timeout)
    except BaseException as exc:  # a timeout, or Ctrl-C / SIGTERM of ours: the session and its children go too
        os.killpg(session.pid, signal.SIGKILL)
        session.wait()
        if isinstance(exc, subprocess.TimeoutExpired):
            return "timeout"
        raise
    return "crash" if returncode < 0 else None
