"""Expectations, flake reruns and KCIDB output on a real labgrid farm on 127.0.0.1 (tests/labgrid_farm.py), with
boards that are real local sshds running the emulated Mali. The faults are seeded on the boards' side
(tests/properties/seeded_boards.py, switched on by each board's sshd ``SetEnv``):

- ``flaky``: its loads go wrong every second time (a counter file on the board): the test fails, passes when rerun;
- ``known``: its loads always go wrong, and its family's fails list says so;
- ``fixed``: its loads are right, but its family's fails list still names the test.

One quick property runs (``test_f32_edge_cases``); a second one is selected and skipped by the common skips list.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from mali_hil.errors import ExpectationsError
from mali_hil.harness.cli import main
from mali_hil.harness.farm import expectations
from mali_hil.harness.farm.kcidb import path_of
from mali_hil.harness.transports.ssh import SshTransport
from mali_hil.harness.transports.ssh_target import SshTarget
from tests.labgrid_farm import LabgridFarm, labgrid_available
from tests.sshd import LoopbackBoard, board_python, sshd_available

pytestmark = [
    pytest.mark.skipif(sshd_available() is not None, reason=str(sshd_available())),
    pytest.mark.skipif(labgrid_available() is not None, reason=str(labgrid_available())),
]
EMULATE = "mali-g52:512MiB"
LOADER = "mali_hil.properties.seeded_boards:faulty_on_marked_boards"
TEST = f"test_numerics.py::test_f32_edge_cases[{{device}}-{LOADER}]"
SKIPPED = r"re:test_numerics\.py::test_exhaustive_bf16_to_fp16\[.*\]"
BOARDS = ("flaky", "known", "fixed")
LISTS = {
    "seeded-known-fails.txt": f"{TEST},FAIL  # seeded fault: this board's loads round toward zero; since 2026-12-07\n",
    "seeded-fixed-fails.txt": f"{TEST},FAIL  # seeded fault, since gone from this board; since 2026-12-01\n",
    "_all-skips.txt": f"{SKIPPED}  # selected and never run: checks the skips list; since 2026-12-07\n",
}


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory, board_disk: Path) -> Iterator[LabgridFarm]:
    boards = {name: LoopbackBoard(tmp_path_factory.mktemp(f"sshd-{name}"), name) for name in BOARDS}
    boards["flaky"].set_env("MALI_HIL_SEEDED_FAULT", f"every-second:{boards['flaky'].root / 'loads'}")
    boards["known"].set_env("MALI_HIL_SEEDED_FAULT", "always")
    for board in boards.values():
        board.workdir = board_disk
        board.start()
    lab = LabgridFarm(tmp_path_factory.mktemp("lab"), boards)
    try:
        yield lab.start({name: {"gpu": "mali-g52", "expectations": f"seeded-{name}"} for name in BOARDS})
    finally:
        lab.stop()
        for board in boards.values():
            board.stop()


def test_a_flake_a_known_failure_and_an_unexpected_pass_on_a_real_farm(farm: LabgridFarm, tmp_path: Path,
                                                                      capsys) -> None:  # fmt: skip
    lists = tmp_path / "expectations"
    lists.mkdir()
    for name, text in LISTS.items():
        (lists / name).write_text(text)
    first = farm.boards["flaky"]
    transport = SshTransport(SshTarget.parse(first.url(emulate=EMULATE, workdir=str(first.workdir))))
    transport.connect()  # mali-hil installed on the shared disk once, before three boards race to
    transport.close()
    options = {"emulate": EMULATE, "ssh_config": str(farm.ssh_config), "workdir": str(first.workdir),
               "python": board_python(), "connect_timeout": "3"}  # fmt: skip
    out = tmp_path / "report"
    code = main(["farm", "run", "--coordinator", farm.address, "--reruns", "2", "--expectations", str(lists),
                 "--wait", "60", "-o", str(out), *(f"--device-option={k}={v}" for k, v in options.items()), "--",
                 "-k", "test_f32_edge_cases or test_exhaustive_bf16_to_fp16", f"--loader={LOADER}"])  # fmt: skip
    report = json.loads((out / "summary.json").read_text())
    boards = report["boards"]
    flaky, known, fixed = (boards[name]["tests"][TEST] for name in BOARDS)
    # the flaky board: failed, then passed when rerun alone: a FLAKE with its history, and the board passes
    assert flaky["verdict"] == "FLAKE" and flaky["status"] == "FLAKE", flaky
    assert [run["status"] for run in flaky["history"]] == ["FAIL", "PASS"]
    assert boards["flaky"]["status"] == "PASS" and len(boards["flaky"]["reruns"]) == 1
    assert (first.root / "loads").read_text() == "2"  # the board's own count: two loads, one of them wrong
    # the known failure is expected: not rerun, the board passes
    assert known["status"] == "FAIL" and known["verdict"] == "EXPECTED_FAIL", known
    assert known["expected"]["where"] == "seeded-known-fails.txt:1" and not boards["known"]["reruns"]
    assert boards["known"]["status"] == "PASS"
    # the listed failure that passed fails the run, so the list gets fixed
    assert fixed["status"] == "PASS" and fixed["verdict"] == "UNEXPECTED_PASS", fixed
    assert boards["fixed"]["status"] == "FAIL" and report["status"] == "FAIL" and code == 1
    # the skips list: selected on every board, never run, its reason reported
    for name in BOARDS:
        skipped = [t for key, t in boards[name]["tests"].items() if "test_exhaustive_bf16_to_fp16" in key]
        assert skipped and all(t["verdict"] == "SKIP" and "_all-skips.txt:1" in t["message"] for t in skipped)
    markdown = (out / "summary.md").read_text()
    assert "### Flakes" in markdown and "attempt-1 FAIL, rerun-1 PASS" in markdown
    assert "UNEXPECTED_PASS `fixed`" in markdown and "| known | **PASS** |" in markdown
    print(markdown)  # the summary of such a run, for the log
    _check_kcidb(out / "kcidb.json")
    # the lists follow the run, for review: the fixed board's entry goes; a flake seen two nights is proposed
    assert main(["farm", "expectations", str(out / "summary.json"), "--expectations", str(lists)]) == 0
    assert TEST not in (lists / "seeded-fixed-fails.txt").read_text()
    assert (lists / "seeded-known-fails.txt").read_text() == LISTS["seeded-known-fails.txt"]
    tomorrow = json.loads(json.dumps(report))
    tomorrow["proposed_flakes"] = expectations.propose_flakes(tomorrow["boards"], previous=report)
    assert tomorrow["proposed_flakes"] == [{"board": "flaky", "family": "seeded-flaky", "test": TEST, "nights": 2}]
    expectations.update(tomorrow, lists)
    assert [e.pattern for e in expectations.load(lists, "seeded-flaky").flakes] == [TEST]
    assert all(farm.holder(name) is None for name in BOARDS)


def _check_kcidb(path: Path) -> None:
    import kcidb_io

    data = json.loads(path.read_text())
    kcidb_io.schema.LATEST.validate(data)
    assert (data["version"]["major"], data["version"]["minor"]) == (5, 3)
    runs = {}
    for test in data["tests"]:
        runs.setdefault(test["environment"]["misc"]["place"], []).append(test["status"])
    assert sorted(runs["flaky"]) == ["FAIL", "PASS", "SKIP"]  # the flake's two runs, the skipped test
    assert sorted(runs["known"]) == ["FAIL", "SKIP"] and sorted(runs["fixed"]) == ["PASS", "SKIP"]
    present = {incident["test_id"].split(":")[2]: incident["present"] for incident in data["incidents"]}
    assert present == {"known": True, "fixed": False}  # the skips list's entry is no issue of the code


def test_verdicts_follow_the_lists() -> None:
    expected = expectations.Expected(
        "f",
        fails=expectations.parse("a,FAIL  # why\nb,ERROR  # why\n", "f-fails.txt", outcomes=expectations.FAILED),
        flakes=expectations.parse("re:c.*  # why\n", "f-flakes.txt"),
    )
    tests = {key: {"status": status} for key, status in
             {"a": "FAIL", "b": "FAIL", "c1": "ERROR", "d": "FAIL", "e": "FLAKE", "a2": "PASS"}.items()}  # fmt: skip
    assert expectations.to_rerun(tests, expected) == ["b", "d"]  # b fails, but its entry says ERROR
    expectations.judge(tests, expected)
    assert {key: test["verdict"] for key, test in tests.items()} == {
        "a": "EXPECTED_FAIL", "b": "FAIL", "c1": "FLAKE", "d": "FAIL", "e": "FLAKE", "a2": "PASS"}  # fmt: skip
    tests = {"a": {"status": "PASS"}}
    expectations.judge(tests, expected)
    assert tests["a"]["verdict"] == "UNEXPECTED_PASS"
    with pytest.raises(ExpectationsError, match=r"f-fails\.txt:1"):
        expectations.parse("a,CRASH  # why\n", "f-fails.txt", outcomes=expectations.FAILED)


def test_a_test_key_becomes_a_kcidb_path() -> None:
    loader = "mali_hil_properties_seeded_boards_faulty_on_marked_boards"
    assert path_of(TEST) == f"mali_hil.test_numerics.test_f32_edge_cases.{loader}"
    assert path_of("sub/test_x.py::TestA::test_b") == "mali_hil.sub.test_x.TestA.test_b"


def test_a_summary_becomes_a_valid_kcidb_document() -> None:
    """Without a farm: every verdict's shape (a flake's two runs, a known failure, an unexpected pass, a MISS
    retried, a test with no history from an older summary) is valid KCIDB v5.3 by kcidb-io."""
    import kcidb_io

    from mali_hil.harness.farm.kcidb import document

    listed = {"where": "f-fails.txt:1", "pattern": "t.py::a", "reason": "why"}
    tests = {
        "t.py::a": {"status": "FAIL", "verdict": "EXPECTED_FAIL", "expected": listed, "nodeid": "t.py::a",
                    "history": [{"run": "attempt-1", "status": "FAIL", "duration_s": 0.5}]},
        "t.py::b[{device}-x]": {"status": "FLAKE", "verdict": "FLAKE", "expected": None,
                                "history": [{"run": "attempt-1", "status": "FAIL", "duration_s": 1.0},
                                            {"run": "rerun-1", "status": "PASS", "duration_s": 1.0}]},
        "t.py::c": {"status": "MISS", "verdict": "MISS"},
    }  # fmt: skip
    report = {"started": "2026-12-07T21:00:00+00:00", "coordinator": "127.0.0.1:1",
              "boards": {"b1": {"family": "f", "tags": {"gpu": "mali-g52"}, "tests": tests},
                         "b2": {"tests": {"t.py::a": {"status": "PASS", "verdict": "UNEXPECTED_PASS",
                                                      "expected": listed, "history": []}}}}}  # fmt: skip
    data = document(report)
    kcidb_io.schema.LATEST.validate(data)
    assert [t["status"] for t in data["tests"]] == ["FAIL", "FAIL", "PASS", "MISS", "PASS"]
    assert [i["present"] for i in data["incidents"]] == [True, False] and len(data["issues"]) == 1


def test_the_expectations_command_refuses_what_is_no_summary(tmp_path: Path, capsys) -> None:
    assert main(["farm", "expectations", str(tmp_path / "none.json")]) == 2
    assert "no summary at" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    assert main(["farm", "expectations", str(tmp_path / "bad.json")]) == 2
    assert "not a mali-hil farm summary" in capsys.readouterr().err
