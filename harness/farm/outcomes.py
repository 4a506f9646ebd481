"""A pytest plugin for the farm's per-board runs (``-p mali_hil.harness.farm.outcomes``): each test's status in
KernelCI's terms, one JSON line per test in ``$MALI_HIL_FARM_OUTCOMES``.

- PASS: passed (an xpass too: the test ran and did not fail).
- FAIL: failed in its call: the loader or the code under test is wrong (an xfail counts as PASS: it was expected).
- ERROR: failed in setup or teardown by its own fault: the test did not complete.
- MISS: did not run because of the infrastructure: the plugin marked it (``mali_hil.outcome=MISS``: the board was
  unreachable or unhealthy), never decided here from a message.
- SKIP: skipped.

Tests the board family's skips list names (``$MALI_HIL_FARM_SKIPS``, a JSON list of its entries) are marked
skipped with the entry's reason before they run.

Loaded only by ``mali-hil farm run`` in the processes it starts; it never runs in users' own sessions.
"""

from __future__ import annotations

import json
import os

import pytest

OUTCOMES_ENV = "MALI_HIL_FARM_OUTCOMES"
SKIPS_ENV = "MALI_HIL_FARM_SKIPS"


def status_of(reports: list[pytest.TestReport]) -> str:
    props = dict(prop for report in reports for prop in report.user_properties)
    if props.get("mali_hil.outcome") == "MISS":
        return "MISS"
    by_phase = {report.when: report for report in reports}
    setup, call = by_phase.get("setup"), by_phase.get("call")
    if setup is not None and setup.failed:
        return "ERROR"
    if any(report.skipped and not hasattr(report, "wasxfail") for report in reports):
        return "SKIP"
    if call is not None and call.failed:
        return "FAIL"
    teardown = by_phase.get("teardown")
    if teardown is not None and teardown.failed:
        return "ERROR"
    return "PASS"


class _Outcomes:
    def __init__(self, path: str) -> None:
        self.path = path
        self.reports: dict[str, list[pytest.TestReport]] = {}

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.reports.setdefault(report.nodeid, []).append(report)
        if report.when == "teardown":
            reports = self.reports.pop(report.nodeid)
            message = next((str(r.longrepr)[-1500:] for r in reports if r.failed or r.skipped), "")
            line = {"test": report.nodeid, "status": status_of(reports), "message": message,
                    "duration_s": round(sum(r.duration for r in reports), 3)}  # fmt: skip
            with open(self.path, "a", encoding="utf-8") as out:
                out.write(json.dumps(line) + "\n")


class _Skips:
    def __init__(self, path: str) -> None:
        from mali_hil.expectations import Expectation

        with open(path, encoding="utf-8") as listed:
            self.entries = [Expectation(**entry) for entry in json.load(listed)]

    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        from mali_hil.expectations import first_match

        devices = config.getoption("mali_hil_devices", None) or []
        for item in items:
            key = item.nodeid
            for device in devices:  # the farm's test key names no device: one list serves every board
                key = key.replace(device, "{device}")
            entry = first_match(self.entries, key)
            if entry is not None:
                item.add_marker(pytest.mark.skip(reason=f"skips list {entry.where}: {entry.reason}"))


def pytest_configure(config: pytest.Config) -> None:
    path = os.environ.get(OUTCOMES_ENV)
    if path:
        config.pluginmanager.register(_Outcomes(path), "mali-hil-farm-outcomes")
    skips = os.environ.get(SKIPS_ENV)
    if skips:
        config.pluginmanager.register(_Skips(skips), "mali-hil-farm-skips")
