"""The pytest plugin as a user meets it: options, parametrization, markers, JUnit properties, the table."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = """
import pytest
from mali_hil.harness.records.results import Status

@pytest.mark.mali_hil_property("numerics")
def test_tiny_loads(load, loader_name, make_checkpoint):
    result = load(make_checkpoint("tiny"))
    assert result.status is Status.OK and result.loader == loader_name

@pytest.mark.board_only
def test_only_on_boards(mali_device):
    raise AssertionError("must be skipped on an emulated device")

@pytest.mark.needs_fp16
def test_needs_native_half(mali_device):
    raise AssertionError("must be skipped where fp16 is emulated")
"""


def test_options_are_in_their_own_help_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["mali-hil:*", "*--device=DEVICE*", "*--loader=LOADER*", "*--job-timeout*"])


def test_devices_and_loaders_parametrize_and_are_reported(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess(
        "--device=emulated-mali:mali-g52:256MiB", "--device=emulated-mali:mali-t860:512MiB",
        "--loader=chunked", "--loader=naive", "--junitxml=report.xml", "-v", "-rs", "-p", "no:cacheprovider",
    )  # fmt: skip
    result.assert_outcomes(passed=4, skipped=4)
    result.stdout.fnmatch_lines([
        "*test_tiny_loads?emulated-mali:mali-g52:256MiB-chunked? PASSED*",
        "*test_tiny_loads?emulated-mali:mali-t860:512MiB-naive? PASSED*",
        "*mali-hil: loader variants*",
        "chunked*| pass*",
        "naive*| pass*",
    ])  # fmt: skip
    result.stdout.fnmatch_lines([
        "*board_only: emulated-mali:mali-g52:256MiB is not a physical board*",
        "*needs_fp16: emulated-mali:mali-g52:256MiB has fp16: emulated*",
    ])  # fmt: skip
    tree = ET.parse(pytester.path / "report.xml")
    case = next(c for c in tree.iter("testcase") if "t860" in c.get("name", "") and "naive" in c.get("name", ""))
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["mali_hil.device"] == "emulated-mali:mali-t860:512MiB"
    assert props["mali_hil.loader"] == "naive"
    assert props["mali_hil.device_name"] == "Mali-T860"
    assert props["mali_hil.profile"] == "mali-t860:512MiB"
    assert props["mali_hil.backend"].startswith("OpenCL") and "PoCL" in props["mali_hil.backend"]
    assert props["mali_hil.fp16"] in ("native", "emulated")
    assert props["mali_hil.enforcement"] == "watchdog"


def test_an_unavailable_device_fails_its_tests_with_the_first_cause(pytester: pytest.Pytester) -> None:
    # A target its kind refuses (an unknown profile) is a usage error before any test (issue 8); a device that is
    # refused only when its worker starts (here: a board whose profile list is stale) is what MISS is for.
    pytester.makeconftest(
        "from mali_hil.harness.devices import Board, Device, register_device\n"
        "from mali_hil.harness.transports.local import LocalTransport\n"
        "register_device('stale', lambda spec: Device(Board(spec, physical=False, emulate_spec='mali-g999'),"
        " LocalTransport()))\n"
    )
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("--device=stale", "--loader=chunked", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines(["*device stale is unavailable: *ProfileError: unknown profile 'mali-g999'*"])
    assert "Traceback" not in result.stdout.str()


def test_every_result_is_recorded(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    pytester.runpytest_subprocess("--device=emulated-mali:mali-g52:256MiB", "--loader=chunked",
                                  "--mali-hil-results=results.jsonl", "-p", "no:cacheprovider")  # fmt: skip
    import json

    lines = [json.loads(line) for line in (pytester.path / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["status"] == "ok" and lines[0]["test"].endswith("chunked]")


def test_the_table_says_which_loaders_were_judged_by_the_default_bound() -> None:
    """A loader whose memory tests recorded ``default`` bounds gets that in its row, and the table states the
    default's formula once; a run where every loader declares its bounds shows no note. Fails if the table hides
    that a loader was judged by a bound it never declared."""
    from types import SimpleNamespace

    from mali_hil.harness.loaders.base import DEFAULT_BOUND
    from mali_hil.harness.plugin.session import HarnessSession
    from mali_hil.harness.plugin.variant_table import VariantTable

    def report(loader: str, prop: str, bounds: str) -> SimpleNamespace:
        props = [("mali_hil.property", prop), ("mali_hil.loader", loader), ("mali_hil.bounds", bounds)]
        return SimpleNamespace(user_properties=props, when="call", outcome="passed")

    table = VariantTable(HarnessSession(devices=["emulated-mali"], loaders=["chunked", "mine:load"]))
    table.pytest_runtest_logreport(report("chunked", "memory-bound", "declared"))
    declared_only = table.table()
    assert not any(DEFAULT_BOUND in line for line in declared_only)
    table.pytest_runtest_logreport(report("mine:load", "memory-bound", "default"))
    lines = table.table()
    header, rows = [cell.strip() for cell in lines[0].split("|")], {line.split("|")[0].strip(): line for line in lines}
    column = header.index("bounds")
    assert [cell.strip() for cell in rows["mine:load"].split("|")][column] == "default"
    assert [cell.strip() for cell in rows["chunked"].split("|")][column] == "declared"
    assert sum(DEFAULT_BOUND in line for line in lines) == 1


def test_the_table_has_rows_for_the_runs_loaders_not_for_every_job_it_saw() -> None:
    """The wrong-loaders tests run seeded bugs as jobs of their own loaders: those jobs are records of the run (the
    results file keeps them) but not variants of it. Fails if every loader that ran a job gets a row, burying the
    run's variants under its test fixtures, or if a loader a property judged loses its row."""
    from types import SimpleNamespace

    from mali_hil.harness.plugin.session import HarnessSession
    from mali_hil.harness.plugin.variant_table import VariantTable
    from mali_hil.harness.records.results import LoadResult, Status

    table = VariantTable(HarnessSession(devices=["emulated-mali"], loaders=["chunked"]))
    props = [("mali_hil.property", "numerics"), ("mali_hil.loader", "mine:judged")]
    table.pytest_runtest_logreport(SimpleNamespace(user_properties=props, when="call", outcome="passed"))
    for loader in ("chunked", "mine:judged", "tests.wrong:seeded_bug"):
        table.session.records.append(("t", LoadResult(Status.OK, loader, "emulated-mali", "c.safetensors")))
    rows = [line.split("|")[0].strip() for line in table.table()[2:]]
    assert rows == ["chunked", "mine:judged"]
