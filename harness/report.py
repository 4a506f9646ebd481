"""The plugin's session object: started devices, every job's result, and the per-variant table at the end.

Kept under a StashKey on pytest's config and registered as a plugin, so its report hooks are methods (as
pytest's own junitxml does). Every job result is kept (and written with ``--mali-hil-results``): nothing a
device reports is lost, including jobs of tests that failed.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from emulator.errors import MaliHilError
from emulator.profile import format_size
from harness.devices import DEFAULT_DEVICE, Device, make_device
from harness.loaders.registry import BUILTIN_NAMES
from harness.results import LoadResult, Status

SESSION_KEY = pytest.StashKey["HarnessSession"]()
DEFAULT_JOB_TIMEOUT = 600.0
PROPERTIES = ("numerics", "memory-bound", "oom", "fit", "idempotence", "shards", "corrupt-input")


@dataclass(eq=False)  # registered as a plugin: must stay hashable
class HarnessSession:
    devices: list[str]
    loaders: list[str]
    job_timeout: float = DEFAULT_JOB_TIMEOUT
    results_path: Path | None = None
    _started: dict[str, Device] = field(default_factory=dict)
    _failed: dict[str, str] = field(default_factory=dict)
    records: list[tuple[str, LoadResult]] = field(default_factory=list)
    outcomes: dict[tuple[str, str], list[str]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def from_config(cls, config: pytest.Config) -> HarnessSession:
        devices = config.getoption("mali_hil_devices") or config.getini("mali_hil_devices") or [DEFAULT_DEVICE]
        loaders = config.getoption("mali_hil_loaders") or config.getini("mali_hil_loaders") or list(BUILTIN_NAMES)
        results = config.getoption("mali_hil_results")
        return cls(
            devices=list(dict.fromkeys(devices)),
            loaders=list(dict.fromkeys(loaders)),
            job_timeout=config.getoption("mali_hil_job_timeout") or DEFAULT_JOB_TIMEOUT,
            results_path=Path(results) if results else None,
        )

    def device(self, spec: str) -> Device:
        """The started device for ``spec``; a device that cannot start fails every test that needs it, with the
        first cause (not a fresh attempt per test against a broken board)."""
        if spec in self._failed:
            pytest.fail(f"device {spec} is unavailable: {self._failed[spec]}", pytrace=False)
        if spec not in self._started:
            try:
                device = make_device(spec)
                device.start()
            except MaliHilError as exc:
                self._failed[spec] = f"{type(exc).__name__}: {exc}"
                pytest.fail(f"device {spec} is unavailable: {self._failed[spec]}", pytrace=False)
            self._started[spec] = device
        return self._started[spec]

    def record(self, nodeid: str, result: LoadResult) -> None:
        self.records.append((nodeid, result))
        if self.results_path is not None:
            with self.results_path.open("a", encoding="utf-8") as out:
                out.write(json.dumps({"test": nodeid, **result.to_dict()}) + "\n")

    def close(self) -> None:
        for device in self._started.values():
            device.stop()
        self._started.clear()

    # --- pytest hooks (this object is registered as a plugin) ----------------------------------------------
    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        return [f"mali-hil: devices {', '.join(self.devices)}; loaders {', '.join(self.loaders)}"]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        prop, loader = props.get("mali_hil.property"), props.get("mali_hil.loader")
        if prop is None or loader is None:
            return
        if report.when == "call" or report.outcome != "passed":  # setup/teardown only count when they fail
            outcome = "xfail" if hasattr(report, "wasxfail") else report.outcome
            self.outcomes[(str(loader), str(prop))].append(outcome)

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
        header = ["loader", *props, *limits]
        rows = [header]
        for loader in self.loaders:
            cells = [loader] + [_verdict(self.outcomes.get((loader, p), [])) for p in props]
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
    pairs = [(getattr(r, used), getattr(r, limit)) for r in results]
    pairs = [(u, lim) for u, lim in pairs if u is not None and lim]
    if not pairs:
        return "n/a"
    u, lim = max(pairs, key=lambda pair: pair[0] / pair[1])
    return f"{format_size(u)} / {format_size(lim)}"


def _statuses(results: list[LoadResult]) -> str:
    ok = sum(r.status is Status.OK for r in results)
    oom = sum(r.status in (Status.DEVICE_OOM, Status.OOM_KILLED) for r in results)
    return f"{ok} / {oom} / {len(results) - ok - oom}"
