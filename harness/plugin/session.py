"""The plugin's session: options read once, the pool of started devices, and every job's result record.

Kept under a StashKey on pytest's config (as pytest's own junitxml keeps its object). Every job result is kept,
and written with ``--mali-hil-results``: nothing a device reports is lost, including jobs of tests that failed.
The results file is opened before any test runs (a folder that is missing or read-only is a usage error then),
and a record that cannot be written (a full disk) stops the run after the current test, with the path named:
running on would only lose more results.
Devices are imported and started only when a test asks for one, so a project that merely has mali-hil installed
pays nothing for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from mali_hil.errors import MaliHilError
from mali_hil.harness.devices.registry import DEFAULT_DEVICE, env_devices
from mali_hil.harness.loaders import BUILTIN_NAMES

if TYPE_CHECKING:
    from mali_hil.harness.devices import Device, DevicePool, DeviceSpec
    from mali_hil.harness.records.results import LoadResult
    from mali_hil.harness.records.results_file import ResultsFile

SESSION_KEY = pytest.StashKey["HarnessSession"]()
DEFAULT_JOB_TIMEOUT = 600.0


@dataclass(eq=False)
class HarnessSession:
    devices: list[str]
    loaders: list[str]
    job_timeout: float = DEFAULT_JOB_TIMEOUT
    results_path: Path | None = None
    profile: str | None = None  # the suite's hypothesis profile (dev, ci, nightly; None: by the CI variable)
    explicit: bool = False  # a mali-hil option or ini value was given: say so in the report header
    specs: dict[str, DeviceSpec] = field(default_factory=dict)  # each given --device, parsed once at the edge
    records: list[tuple[str, LoadResult]] = field(default_factory=list)
    write_error: MaliHilError | None = None  # the first record that could not be written: the run stops
    _pool: DevicePool | None = None
    _results: ResultsFile | None = None

    @classmethod
    def from_config(cls, config: pytest.Config) -> HarnessSession:
        given_devices = config.getoption("mali_hil_devices") or env_devices() or config.getini("mali_hil_devices")
        given_loaders = config.getoption("mali_hil_loaders") or config.getini("mali_hil_loaders")
        results = config.getoption("mali_hil_results")
        specs = _check_devices(given_devices) if given_devices else {}
        session = cls(
            devices=list(dict.fromkeys(given_devices or [DEFAULT_DEVICE])),
            loaders=list(dict.fromkeys(given_loaders or BUILTIN_NAMES)),
            job_timeout=_given(config.getoption("mali_hil_job_timeout"), DEFAULT_JOB_TIMEOUT),
            results_path=Path(results) if results else None,
            profile=config.getoption("mali_hil_profile"),
            explicit=bool(given_devices or given_loaders or results),
            specs=specs,
        )
        if results:
            from mali_hil.harness.records.results_file import ResultsFile

            try:
                session._results = ResultsFile(results)
            except MaliHilError as exc:
                raise pytest.UsageError(f"--mali-hil-results: {exc}") from None
        return session

    @property
    def pool(self) -> DevicePool:
        if self._pool is None:
            from mali_hil.harness.devices import DevicePool

            self._pool = DevicePool()
        return self._pool

    def device(self, spec: str, item: pytest.Item | None = None) -> Device:
        """The started device for ``spec``. A device that cannot start (an unreachable or unhealthy board) errors
        every test that needs it with the first cause, marked ``MISS`` (not run because of the infrastructure,
        in KernelCI's terms): never a test failure, and never a fresh attempt per test against a broken board."""
        from mali_hil.harness.devices import DeviceUnavailable

        try:
            return self.pool.acquire(self.specs.get(spec, spec))
        except DeviceUnavailable as exc:
            if item is not None:
                item.user_properties.append(("mali_hil.outcome", "MISS"))
            pytest.fail(f"MISS: {exc}", pytrace=False)

    def record(self, nodeid: str, result: LoadResult) -> None:
        """Keep the record, and append it to the results file; the first write that fails is kept in
        ``write_error`` (the caller stops the run) and nothing more is written."""
        self.records.append((nodeid, result))
        if self._results is not None and self.write_error is None:
            try:
                self._results.write({"test": nodeid, **result.to_dict()})
            except MaliHilError as exc:
                self.write_error = exc

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._results is not None:
            self._results.close()


def _given(value: float | None, default: float) -> float:
    return default if value is None else value  # 0 is refused by the option's type, never silently replaced


def _check_devices(given: list[str]) -> dict[str, DeviceSpec]:
    """Each ``--device`` parsed once, as the pool later makes it; a malformed value, an unknown kind or a target
    its kind refuses (``local:junk``, an unknown profile) is a usage error at once. Nothing starts here."""
    from mali_hil.harness.devices import DeviceSpec
    from mali_hil.harness.devices.registry import check_device

    specs = {}
    for text in given:
        try:
            specs[text] = DeviceSpec.parse(text)
            check_device(specs[text])
        except MaliHilError as exc:
            raise pytest.UsageError(f"--device: {exc}") from None
    return specs
