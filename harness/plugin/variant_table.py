"""The per-variant table at the end of a run: one row per loader, built from immutable result records.

Registered as a plugin beside the session (its report hooks are methods, as in pytest's junitxml). It reads the
test reports' properties (which property, which loader, which bounds its memory was judged by) and the session's
result records; it starts nothing and changes nothing.

Under pytest-xdist the table is printed by the controller, which gets every test report but runs no job: each
worker hands its result records over in ``workeroutput`` when it finishes (the way pytest-cov collects coverage),
and the controller adds them to its own session's records before the summary.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from mali_hil.harness.plugin.session import HarnessSession
    from mali_hil.harness.records.results import LoadResult

WORKER_RECORDS = "mali_hil.records"  # workeroutput key: a worker's records, as JSON


class VariantTable:
    def __init__(self, session: HarnessSession) -> None:
        self.session = session
        self.outcomes: dict[tuple[str, str], list[str]] = defaultdict(list)
        self.bounds: dict[str, str] = {}  # loader -> what its memory was judged by: "declared", "default", ...

    @property
    def loaders(self) -> Sequence[str]:
        return self.session.loaders

    @property
    def records(self) -> list[tuple[str, LoadResult]]:
        return self.session.records

    # --- pytest hooks --------------------------------------------------------------------------------------
    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        if not self.session.explicit:
            return []
        return [f"mali-hil: devices {', '.join(self.session.devices)}; loaders {', '.join(self.loaders)}"]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        prop, loader = props.get("mali_hil.property"), props.get("mali_hil.loader")
        if prop is None or loader is None:
            return
        if "mali_hil.bounds" in props:
            self.bounds[str(loader)] = str(props["mali_hil.bounds"])
        if report.when == "call" or report.outcome != "passed":  # setup/teardown only count when they fail
            outcome = "xfail" if hasattr(report, "wasxfail") else report.outcome
            self.outcomes[(str(loader), str(prop))].append(outcome)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        output = getattr(session.config, "workeroutput", None)
        if output is not None:  # an xdist worker: hand the records to the controller
            # without the tensors' values (base64, up to MiBs each): the table never reads them, and the results
            # file already has every record whole
            records = [[nodeid, {**result.to_dict(), "values": {}}] for nodeid, result in self.records]
            output[WORKER_RECORDS] = json.dumps(records)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """xdist's controller: a worker finished; take its records (a crashed worker has none to give, but wrote
        each of its records to ``--mali-hil-results`` as it went)."""
        from mali_hil.harness.records.results import LoadResult

        text = getattr(node, "workeroutput", {}).get(WORKER_RECORDS)
        if text:
            self.session.records.extend((nodeid, LoadResult.from_dict(data)) for nodeid, data in json.loads(text))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.outcomes and not self.records:
            return
        terminalreporter.section("mali-hil: loader variants")
        for line in self.table():
            terminalreporter.write_line(line)

    # --- the table: built by the report's own rules (mali_hil.harness.reports.tables) -------------------------
    def table(self) -> list[str]:
        from mali_hil.harness.reports.tables import text_lines, variant_table

        # rows for the run's loaders and those a property judged; jobs of other loaders (the wrong-loaders tests
        # run seeded bugs as jobs of their own) are in the results file, not rows of the variants' table
        shown = {*self.loaders, *(loader for loader, _ in self.outcomes)}
        records = [r for _, r in self.records if r.loader in shown]
        built = variant_table(records, self.outcomes, self.loaders, self.bounds)
        if built is None:
            return []
        lines = text_lines(built)
        if any(kind.startswith("default") for kind in self.bounds.values()):
            from mali_hil.harness.loaders.base import DEFAULT_BOUND

            lines.append(
                f"bounds: default = {DEFAULT_BOUND} (one tensor in flight), for device and RAM, wherever a loader"
                " declares none; declare Loader.device_bound/ram_bound to be judged by your own"
            )
        return lines
