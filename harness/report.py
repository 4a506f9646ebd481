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
    from mali_hil.harness.results import LoadResult
    from mali_hil.harness.session import HarnessSession

WORKER_RECORDS = "mali_hil.records"  # workeroutput key: a worker's records, as JSON
PROPERTIES = ("numerics", "dtypes", "memory-bound", "oom", "fit", "idempotence", "shards", "corrupt-input",
              "large-offsets", "leaks")


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
        from mali_hil.harness.results import LoadResult

        text = getattr(node, "workeroutput", {}).get(WORKER_RECORDS)
        if text:
            self.session.records.extend((nodeid, LoadResult.from_dict(data)) for nodeid, data in json.loads(text))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.outcomes and not self.records:
            return
        terminalreporter.section("mali-hil: loader variants")
        for line in self.table():
            terminalreporter.write_line(line)

    # --- the table -----------------------------------------------------------------------------------------
    def table(self) -> list[str]:
        props = [p for p in PROPERTIES if any(k[1] == p for k in self.outcomes)]
        limits = ["device peak / cap (ok jobs)", "RAM peak / budget (ok jobs)", "jobs ok / oom / other"]
        judged = ["bounds"] if self.bounds else []
        header = ["loader", *judged, *props, *limits]
        rows = [header]
        for loader in self.loaders:
            cells = [loader] + [self.bounds.get(loader, "-") for _ in judged]
            cells += [_verdict(self.outcomes.get((loader, p), [])) for p in props]
            mine = [r for _, r in self.records if r.loader == loader]
            finished = [r for r in mine if r.ok]  # a killed job's peak is the limit it crossed, not a fit
            cells += [
                _highest(finished, "device_peak_bytes", "device_cap_bytes"),
                _highest(finished, "peak_unified_bytes", "ram_budget_bytes"),
                _statuses(mine),
            ]
            rows.append(cells)
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
        lines.insert(1, "-+-".join("-" * w for w in widths))
        if any(kind.startswith("default") for kind in self.bounds.values()):
            from mali_hil.harness.loaders.base import DEFAULT_BOUND

            lines.append(
                f"bounds: default = {DEFAULT_BOUND} (one tensor in flight), for device and RAM, wherever a loader"
                " declares none; declare Loader.device_bound/ram_bound to be judged by your own"
            )
        return lines


def _verdict(outcomes: list[str]) -> str:
    if not outcomes:
        return "-"
    if "failed" in outcomes:
        return "FAIL"
    if "xfail" in outcomes:
        return "xfail"
    return "pass" if "passed" in outcomes else "skip"


def _highest(results: list[LoadResult], used: str, limit: str) -> str:
    """The result closest to its limit, as "used / limit" (fields of LoadResult, in bytes)."""
    from mali_hil.emulator.profile import format_size

    pairs = [(getattr(r, used), getattr(r, limit)) for r in results]
    pairs = [(u, lim) for u, lim in pairs if u is not None and lim]
    if not pairs:
        return "n/a"
    u, lim = max(pairs, key=lambda pair: pair[0] / pair[1])
    return f"{format_size(u)} / {format_size(lim)}"


def _statuses(results: list[LoadResult]) -> str:
    from mali_hil.harness.results import Status

    ok = sum(r.status is Status.OK for r in results)
    oom = sum(r.status in (Status.DEVICE_OOM, Status.OOM_KILLED) for r in results)
    return f"{ok} / {oom} / {len(results) - ok - oom}"
