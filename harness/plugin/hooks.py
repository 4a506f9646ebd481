"""mali-hil's pytest plugin (entry point ``pytest11``): ``pytest --device=emulated-mali --loader=chunked``.

Thin by design: options, markers, parametrization over devices and loaders, and fixtures that read the session
object kept in the config's stash. A good guest in other people's projects: importing it imports only pytest,
it touches no hypothesis setting, and devices, tinygrad and numpy are imported only when a test asks for a
mali-hil fixture.

Fixtures for users' own tests:
- ``mali_device``: a started device (session-scoped); tests that use it run once per ``--device``.
- ``loader_name``: tests that use it run once per ``--loader`` (default: every built-in variant).
- ``load(checkpoint, **job)``: runs one load job on ``mali_device`` with ``loader_name`` (or ``loader=``)
  and returns its :class:`mali_hil.harness.records.results.LoadResult`; every result is recorded for the report.
- ``make_checkpoint(model="tiny", **options)``: writes (once per session and options) a checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from mali_hil.harness.plugin.session import HarnessSession
    from mali_hil.harness.records.results import LoadResult

MARKERS = (
    "mali_hil_property(name): the suite property a test checks (numerics, dtypes, memory-bound, oom, fit, "
    "idempotence, shards, corrupt-input, large-offsets, leaks); used to build the per-variant table",
    "needs_fp16: needs native fp16 on the device; skipped where the backend emulates it",
    "board_only: needs a physical Mali board; skipped on emulated and local devices",
    "slow: long-running; for nightly runs",
)


def _seconds(text: str) -> float:
    from mali_hil.harness.cli.args import seconds

    return seconds(text)


def _session(config: pytest.Config) -> HarnessSession:
    from mali_hil.harness.plugin.session import SESSION_KEY

    return config.stash[SESSION_KEY]


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    from mali_hil.harness.devices.registry import DEFAULT_DEVICE

    group = parser.getgroup("mali-hil", "mali-hil: load ML weights on (emulated) Mali boards")
    group.addoption(
        "--device",
        action="append",
        default=[],
        dest="mali_hil_devices",
        metavar="DEVICE",
        help=f"where load jobs run: emulated-mali[:PROFILE[:RAM]] (default: $MALI_HIL_DEVICE, else {DEFAULT_DEVICE}), "
        "local, docker[:PROFILE[:RAM]], ssh://..., or a kind of the entry point group mali_hil.devices. "
        "Repeat for several: tests then run once per device.",
    )
    group.addoption(
        "--loader",
        action="append",
        default=[],
        dest="mali_hil_loaders",
        metavar="LOADER",
        help="loader variant under test: a built-in name or module:function. Repeat for several "
        "(default: every built-in).",
    )
    group.addoption(
        "--job-timeout",
        type=_seconds,
        default=None,
        dest="mali_hil_job_timeout",
        metavar="SECONDS",
        help="seconds before a load job is killed and recorded as 'timeout' (default 600).",
    )
    group.addoption(
        "--mali-hil-results",
        default=None,
        dest="mali_hil_results",
        metavar="PATH",
        help="write every load job's result record to PATH (JSON lines).",
    )
    group.addoption(
        "--mali-hil-profile",
        choices=("dev", "ci", "nightly"),
        default=None,
        dest="mali_hil_profile",
        help="hypothesis profile of mali-hil's own property suite: dev (quick), ci, nightly (thorough). "
        "Default: ci when CI is set, else dev. Other hypothesis tests are not affected.",
    )
    if not _labgrid_plugin_adds_coordinator(pluginmanager):
        group.addoption(
            "--lg-coordinator",
            default=None,
            dest="lg_coordinator",
            metavar="HOST:PORT",
            help="labgrid coordinator for --device=labgrid:... (default: LG_COORDINATOR), as labgrid's plugin "
            "takes it.",
        )
    parser.addini("mali_hil_devices", type="linelist", help="default --device values")
    parser.addini("mali_hil_loaders", type="linelist", help="default --loader values")


def _labgrid_plugin_adds_coordinator(pluginmanager: pytest.PytestPluginManager) -> bool:
    """labgrid's own pytest plugin (installed with labgrid) has ``--lg-coordinator``: the same option, not a
    second one (argparse would refuse the pair). A find_spec, not an import: labgrid is not loaded here."""
    import os
    from importlib.util import find_spec

    if pluginmanager.is_blocked("labgrid"):
        return False
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return pluginmanager.has_plugin("labgrid")
    return find_spec("labgrid") is not None


def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    coordinator = config.getoption("lg_coordinator", None)
    if coordinator:
        from mali_hil.harness.devices.labgrid import set_coordinator

        set_coordinator(coordinator)
    from mali_hil.harness.plugin.session import SESSION_KEY, HarnessSession
    from mali_hil.harness.plugin.variant_table import VariantTable

    session = HarnessSession.from_config(config)
    config.stash[SESSION_KEY] = session
    config.pluginmanager.register(VariantTable(session), "mali-hil-variant-table")


def pytest_unconfigure(config: pytest.Config) -> None:
    from mali_hil.harness.plugin.session import SESSION_KEY

    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        session.close()
    table = config.pluginmanager.get_plugin("mali-hil-variant-table")
    if table is not None:
        config.pluginmanager.unregister(table)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    session = _session(metafunc.config)
    if "mali_device" in metafunc.fixturenames:
        metafunc.parametrize("mali_device", session.devices, indirect=True, scope="session", ids=session.devices)
    if "loader_name" in metafunc.fixturenames:
        metafunc.parametrize("loader_name", session.loaders, scope="session")


@pytest.fixture(scope="session")
def mali_device(request: pytest.FixtureRequest) -> Any:
    """A started device (see mali_hil.harness.devices) for the current ``--device`` parameter."""
    return _session(request.config).device(request.param)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Per test that uses our fixtures: the device and loader as JUnit properties, and the markers' skips (which
    need the device's facts, so its worker starts here, before the test's own fixtures)."""
    names = getattr(item, "fixturenames", ())
    if "mali_device" not in names and "loader_name" not in names:
        return
    params = getattr(getattr(item, "callspec", None), "params", {})
    marker = item.get_closest_marker("mali_hil_property")
    if marker is not None and marker.args:
        item.user_properties.append(("mali_hil.property", marker.args[0]))
    if "loader_name" in params:
        item.user_properties.append(("mali_hil.loader", params["loader_name"]))
    if "mali_device" not in params:
        return
    facts = _session(item.config).device(params["mali_device"], item).facts
    item.user_properties.extend((f"mali_hil.{key}", value) for key, value in facts.properties().items())
    if item.get_closest_marker("board_only") and not facts.physical:
        pytest.skip(f"board_only: {facts.spec} is not a physical board")
    from mali_hil.emulator.backend import Fp16Fidelity

    if item.get_closest_marker("needs_fp16") and facts.fp16 is not Fp16Fidelity.NATIVE:
        pytest.skip(f"needs_fp16: {facts.spec} has {facts.fp16.describe()}")


@pytest.fixture
def load(request: pytest.FixtureRequest, mali_device: Any) -> Callable[..., LoadResult]:
    """``load(checkpoint, loader=None, **job_fields) -> LoadResult``: one job on the current device."""
    from mali_hil.harness.records.jobs import LoadJob

    session = _session(request.config)
    default_loader = request.getfixturevalue("loader_name") if "loader_name" in request.fixturenames else "chunked"

    def run(checkpoint: str | Path, loader: str | None = None, **job_fields: Any) -> LoadResult:
        job_fields.setdefault("timeout_s", session.job_timeout)
        job = LoadJob(checkpoint=str(Path(checkpoint).resolve()), loader=loader or default_loader, **job_fields)
        result = mali_device.run(job)
        session.record(request.node.nodeid, result)
        if session.write_error is not None:  # results are being lost: stop after this test, and say where
            request.session.shouldfail = f"mali-hil: {session.write_error}"
        return result

    return run


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Path]]:
    """``make_checkpoint(model="tiny", **options) -> Path``: written once for each set of options, and kept in
    mali-hil's cache folder for later runs (read-only; see :mod:`mali_hil.harness.checkpoints.cache`).

    Options are those of :func:`mali_hil.harness.checkpoints.make_checkpoint` (scale, seed, shards, dtype, fill,
    layers).
    A sharded checkpoint's path is its ``model.safetensors.index.json``.
    """
    from mali_hil.harness.checkpoints import make_checkpoint as make
    from mali_hil.harness.checkpoints.cache import cache_key as key_of
    from mali_hil.harness.checkpoints.cache import cached_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    made: dict[tuple[Any, ...], Path] = {}

    def factory(model: str = "tiny", **options: Any) -> Path:
        key = (model, *sorted(options.items()))
        if key not in made:
            name = "-".join(str(part) for part in (model, *(f"{k}{v}" for k, v in sorted(options.items()))))
            shards = options.get("shards", 1)

            def write(out: Path) -> Path:
                checkpoint = make(model, out, **options)
                return checkpoint.index if shards > 1 and checkpoint.index else out

            # the same bytes every run: kept between runs and shared by xdist workers (checkpoints.cache)
            cache_key = key_of("make_checkpoint", {"model": model, **options})
            made[key] = cached_checkpoint(cache_key, name if shards > 1 else f"{name}.safetensors", write, root)
        return made[key]

    yield factory
