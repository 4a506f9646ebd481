"""The standing external-suite check: its expectations files are valid and judged both ways (an unlisted
difference and a stale entry fail), a session that dies mid-test is picked up where it died, and the allocation
probe matches the profiles. The external suites themselves run in CI's conformance job (a fraction) and nightly
(whole): minutes to an hour each, too long for this suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from mali_hil.emulator.alloc_probe import check, probe
from mali_hil.emulator.conformance.expectations import (
    EXPECTATIONS_DIR,
    compare,
    load_expectations,
    parse,
    slow_tests,
)
from mali_hil.emulator.conformance.run import PLAIN, SUITES, Suite, SuiteRun, run_suite
from mali_hil.emulator.emulated_board import EmulatedBoard
from mali_hil.emulator.profile import available_profiles
from mali_hil.errors import ExpectationsError


def test_every_expectations_file_parses_and_names_a_profile() -> None:
    for path in EXPECTATIONS_DIR.glob("*.txt"):
        assert path.stem in {*available_profiles(), "_all", "_slow"}, f"{path.name} names no profile"
    for key in available_profiles():
        for entry in load_expectations(key):
            assert entry.reason  # parse refuses an entry without one
    assert all("::" in test for test in slow_tests())


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("pyopencl::test_x,fail", "needs its reason"),
        ("pyopencl::test_x,broken  # why", "want TEST,OUTCOME"),
        ("re:pyopencl::test_[,skip  # why", "bad regular expression"),
    ],
)
def test_a_bad_entry_is_refused_with_its_place(line: str, message: str) -> None:
    with pytest.raises(ExpectationsError, match=message) as caught:
        parse(f"# header\n{line}\n", "mali-x.txt")
    assert "mali-x.txt:2" in str(caught.value)


def _runs(plain: dict[str, str], seen: dict[str, str]) -> tuple[SuiteRun, SuiteRun]:
    return SuiteRun("s", "plain-pocl", dict(plain)), SuiteRun("s", "mali-x:1GiB", dict(seen))


def test_differences_are_judged_both_ways() -> None:
    entries = parse(
        "s::a[float64],skip  # fp64: Mali has none\n"
        "re:s::b\\[.*\\],fail  # a reason\n"
        "s::c,flake  # order-dependent\n"
        "s::d,fail  # fixed since, so stale\n"
        "s::never_ran,fail  # not judged: did not run in this fraction\n",
        "mali-x.txt",
    )
    plain, seen = _runs(
        {"s::a[float64]": "pass", "s::b[1]": "pass", "s::c": "pass", "s::d": "pass", "s::e": "pass"},
        {"s::a[float64]": "skip", "s::b[1]": "fail", "s::c": "fail", "s::d": "pass", "s::e": "crash"},
    )
    verdict = compare(plain, seen, entries)
    assert [test for test, *_ in verdict.expected] == ["s::a[float64]", "s::b[1]", "s::c"]
    assert verdict.unexpected == [("s::e", "pass", "crash")]
    assert [entry.pattern for entry in verdict.stale] == ["s::d"]
    assert not verdict.ok
    # a listed difference with another outcome than the one seen is no excuse
    assert compare(*_runs({"s::a[float64]": "pass"}, {"s::a[float64]": "fail"}), entries).unexpected
    # a flake covers its tests whatever they do; their other entries are not judged by them (not stale)
    layered = parse("s::f[float64],skip  # fp64\nre:s::f.*,flake  # heap corruption lands anywhere\n", "mali-x.txt")
    assert compare(*_runs({"s::f[float64]": "pass"}, {"s::f[float64]": "crash"}), layered).ok
    # a test only one side reached is a difference too (an id that names the device would hide every one)
    assert compare(*_runs({"s::x[PoCL]": "pass"}, {"s::x[Mali]": "pass"}), []).unexpected == [
        ("s::x[Mali]", "missing", "pass"), ("s::x[PoCL]", "pass", "missing")]


CRASHY = """
import ctypes
def test_a(): pass
def test_b(): ctypes.string_at(0)  # SIGSEGV: the session dies here
def test_c(): pass
def test_d(): assert False
"""


def test_pyopencl_ids_do_not_name_the_device() -> None:
    nodeid = "test_array.py::test_sum[<context factory for <pyopencl.Device 'Mali-G52' on 'ARM Platform'>>-float32]"
    assert SUITES["pyopencl"].test_id(nodeid) == "pyopencl::test_array.py::test_sum[ctx-float32]"


def test_a_session_that_dies_is_resumed_and_the_test_marked(tmp_path: Path) -> None:
    (tmp_path / "test_crashy.py").write_text(CRASHY)
    suite = Suite("own", "own", ".", ("test_crashy.py",))
    run = run_suite(suite, PLAIN, folder=tmp_path)
    prefix = "own::test_crashy.py::"
    assert run.outcomes == {f"{prefix}test_a": "pass", f"{prefix}test_b": "crash", f"{prefix}test_c": "pass",
                            f"{prefix}test_d": "fail"}  # fmt: skip
    assert run.sessions == 2
    every_other = run_suite(suite, PLAIN, fraction=(2, 2), folder=tmp_path)
    assert set(every_other.outcomes) == {f"{prefix}test_b", f"{prefix}test_d"}


@pytest.mark.parametrize("spec", ["mali-g52:512MiB", "mali-t860:512MiB"])
def test_allocation_probe_matches_the_profile(spec: str) -> None:
    board = EmulatedBoard.from_spec(spec)
    result = probe(board, ("64MiB",))
    assert check(board, result) == [], result
    assert result.fills[0].buffers == board.profile.global_mem // (64 << 20)
