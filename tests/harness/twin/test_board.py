"""``mali-hil board capture`` and ``board diff`` against a real OpenSSH server on 127.0.0.1 (tests/sshd.py). The
"board" behind it is this machine running the emulated Mali of one profile (``emulate=``): the fake that stands
in for a physical board, so a capture must give that profile back."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import pytest

from mali_hil.emulator.emulated_board import EmulatedBoard
from mali_hil.emulator.info import describe
from mali_hil.emulator.profile import load_profile
from mali_hil.sizes import format_size
from tests.sshd import LoopbackBoard, running_board, sshd_available

pytestmark = pytest.mark.skipif(sshd_available() is not None, reason=str(sshd_available()))
EMULATED = "mali-g610:256MiB"  # a profile with [memory]: the twin's budget is what it leaves a job, not 512 MiB
_NOT_IDENTITY = {"key", "path", "sources", "memory", "board_ram", "global_mem_share", "max_alloc_limit",
                 "extensions", "platform_extensions", "oom_error"}  # fmt: skip


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mali_hil.harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory, board_disk: Path) -> Iterator[LoopbackBoard]:
    with running_board(tmp_path_factory.mktemp("sshd"), "twin", board_disk) as server:
        yield server


@pytest.fixture(scope="module")
def captured(board: LoopbackBoard, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("profiles") / "board-a.toml"
    done = cli("board", "capture", board.url(emulate=EMULATED), "-o", str(out))
    assert done.returncode == 0, done.stderr
    return out, done.stdout


def test_a_capture_gives_the_board_back(captured: tuple[Path, str], board: LoopbackBoard) -> None:
    path, printed = captured
    original, twin = load_profile(EMULATED), load_profile(str(path))
    for field in fields(original):  # every identity field the profiles have, through the board's driver
        if field.name not in _NOT_IDENTITY:
            assert getattr(twin, field.name) == getattr(original, field.name), field.name
    # extensions: those the emulated device advertises (the backend's and the layer's), as a real capture sees
    seen = describe(EmulatedBoard.from_spec(EMULATED))["platforms"][0]
    assert list(twin.extensions) == seen["devices"][0]["extensions"]
    assert list(twin.platform_extensions) == seen["extensions"]
    assert twin.board_ram == original.board_ram and twin.memory == original.memory
    # the budget: what the board leaves a job, exactly, and the probe's fill was killed within one buffer of it
    budget = original.job_budget()
    assert EmulatedBoard.from_spec(str(path)).ram_budget == budget < original.board_ram
    trigger = twin.sources["oom_trigger"]  # names the fill the board was killed in: "N buffers of SIZE bytes, then"
    assert "then oom-killed" in trigger and twin.oom_failure.value == "oom-kill"
    buffers, size = (int(word) for word in trigger.split(": ")[-1].split()[:4:3])
    assert budget - size - (96 << 20) <= buffers * size <= budget  # tolerance: one buffer plus the baseline
    assert all(source.startswith("captured from mali-hil-twin on ") for key, source in twin.sources.items()
               if key not in ("oom_error",)), twin.sources  # fmt: skip
    assert f"a job gets {format_size(budget)}" in printed and "256.00 MiB nominal" in printed


def test_a_busy_board_and_a_board_without_opencl_are_refused(board: LoopbackBoard, tmp_path: Path,
                                                            board_disk: Path) -> None:  # fmt: skip
    # this machine's own memory, read on the board's side; no probe runs on a busy board
    busy = cli("board", "capture", board.url(), "--min-available", "1", "-o", str(tmp_path / "x.toml"))
    assert busy.returncode == 2 and "refused the capture: the board is busy: MemAvailable" in busy.stderr
    assert not (tmp_path / "x.toml").exists()
    no_icd = {"OCL_ICD_VENDORS": str(tmp_path / "no-icd")}
    with running_board(tmp_path / "sshd", "bare", board_disk, session_env=no_icd) as bare:
        none = cli("board", "capture", bare.url(), "-o", str(tmp_path / "y.toml"))
    assert none.returncode == 2 and "no usable OpenCL device" in none.stderr, none.stderr
    assert "Traceback" not in none.stderr and not (tmp_path / "y.toml").exists()
    assert board.board_processes() == [] and bare.board_processes() == []


DIFF_TESTS = """
def test_small(load, make_checkpoint, loader_name):
    assert load(make_checkpoint("tiny")).status.value == "ok"


def test_mid(load, make_checkpoint, loader_name):
    result = load(make_checkpoint("llama-3.2-1b", scale=0.24, fill="constant"), digests=False)
    assert result.status.value == "ok", result.status.value
"""


def test_board_diff_shows_exactly_the_disagreements_of_a_smaller_twin(board: LoopbackBoard, tmp_path: Path) -> None:
    """The board leaves a job 256 MiB; the twin half that: a 136 MiB checkpoint fits the one and not the other,
    a tiny one fits both. Two rows, one disagreement, both in summary.json, summary.md and the report page."""
    (tmp_path / "test_user.py").write_text(DIFF_TESTS)
    out = tmp_path / "diff"
    done = cli("board", "diff", "-o", str(out), "--workers", "1", board.url(emulate="mali-g52:256MiB"),
               "emulated-mali:mali-g52:128MiB", "--", str(tmp_path / "test_user.py"), "-k", "test_small or test_mid",
               "--loader=chunked")  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr  # a disagreement
    doc = json.loads((out / "summary.json").read_text())
    rows = {row["test"].rsplit("::", 1)[-1].split("[")[0]: row for row in doc["rows"]}
    assert set(rows) == {"test_small", "test_mid"}, doc["rows"]
    assert rows["test_small"]["agree"] and rows["test_small"]["board"] == "passed/ok"
    mid = rows["test_mid"]
    assert not mid["agree"] and mid["board"] == "passed/ok" and mid["twin"].startswith("failed/")
    assert mid["twin"] in ("failed/oom-killed", "failed/device-oom")
    assert doc["fidelity"]["agree"] == 1 and doc["fidelity"]["total"] == 2
    assert all(row["ratio"] is not None and 0.3 < row["ratio"] < 3 for row in doc["rows"])
    assert "fidelity: 1 of 2 verdicts agree (50%)" in done.stdout
    assert "fidelity: 1 of 2 verdicts agree" in (out / "summary.md").read_text()
    page = cli("report", str(out / "summary.json"), "-o", str(tmp_path / "report.html"))
    assert page.returncode == 0, page.stderr
    assert "1 of 2 verdicts agree" in (tmp_path / "report.html").read_text()


@pytest.mark.slow
def test_the_captured_twin_agrees_with_its_board(captured: tuple[Path, str], board: LoopbackBoard,
                                                tmp_path: Path) -> None:  # fmt: skip
    """The twin made by capture, against the board it was captured from: every verdict agrees and the peaks are
    alike (both are this machine under the same profile and budget); summary.json keeps both runs' times."""
    out = tmp_path / "diff"
    done = cli("board", "diff", "-o", str(out), board.url(emulate=EMULATED), f"emulated-mali:{captured[0]}", "--",
               "--loader=chunked", "--loader=naive", "--mali-hil-profile=ci", "-k",
               "numerics or shards or idempotence or corrupt", timeout=1800)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    doc = json.loads((out / "summary.json").read_text())
    assert doc["fidelity"]["agree"] == doc["fidelity"]["total"] >= 20
    spread = doc["fidelity"]["peak_ratio"]
    assert spread is not None and 0.8 < spread["min"] <= spread["max"] < 1.25
