"""pytest plugin for an external suite's run (loaded with ``-p`` in that run only, never installed as an entry
point): one JSON line per test as it starts and as it ends, flushed at once, so a session killed mid-test (a
crash, an OOM kill) still says which tests ended how and which one was running; and the selection:

- ``MALI_HIL_SUITE_FRACTION=START/EVERY``: every EVERY-th test from the START-th (1-based), as deqp-runner's
  ``--fraction-start``/``--fraction``, for the broadest coverage in a short run;
- ``MALI_HIL_SUITE_DESELECT=FILE``: test ids (one a line) not to run: those an earlier session already ran
  before it died, and the slow ones a quick run leaves to the nightly; a test's id is also tried after the
  suite's rewrites (``MALI_HIL_SUITE_REWRITES``, JSON pairs of regex and replacement).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pytest

LOG_ENV = "MALI_HIL_SUITE_LOG"
FRACTION_ENV = "MALI_HIL_SUITE_FRACTION"
DESELECT_ENV = "MALI_HIL_SUITE_DESELECT"
REWRITES_ENV = "MALI_HIL_SUITE_REWRITES"

_outcomes: dict[str, str] = {}


def _write(record: dict[str, Any]) -> None:
    path = os.environ.get(LOG_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    deselect_file = os.environ.get(DESELECT_ENV)
    dropped = set()
    if deselect_file:
        with open(deselect_file, encoding="utf-8") as listing:
            dropped = {line.strip() for line in listing if line.strip()}
    start, every = 1, 1
    if os.environ.get(FRACTION_ENV):
        start, every = (int(part) for part in os.environ[FRACTION_ENV].split("/"))
    rewrites = json.loads(os.environ.get(REWRITES_ENV) or "[]")

    def rewritten(nodeid: str) -> str:
        for pattern, replacement in rewrites:
            nodeid = re.sub(pattern, replacement, nodeid)
        return nodeid

    keep = [item for i, item in enumerate(items)
            if i % every == start - 1 and not {item.nodeid, rewritten(item.nodeid)} & dropped]  # fmt: skip
    config.hook.pytest_deselected(items=[item for item in items if item not in keep])
    items[:] = keep


def pytest_runtest_logstart(nodeid: str) -> None:
    _write({"start": nodeid})


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    xfail = hasattr(report, "wasxfail")
    if report.skipped:
        outcome = "xfail" if xfail else "skip"
    elif report.failed:
        outcome = "fail" if report.when == "call" else "error"
    elif report.when == "call":
        outcome = "xpass" if xfail else "pass"
    else:
        return
    if _outcomes.get(report.nodeid) in (None, "pass"):  # the first non-pass phase decides
        _outcomes[report.nodeid] = outcome


def pytest_runtest_logfinish(nodeid: str) -> None:
    _write({"id": nodeid, "outcome": _outcomes.pop(nodeid, "pass")})
