"""mali-hil's pytest plugin (entry point ``pytest11``): ``pytest --device=emulated-mali --loader=chunked``.

Thin by design: options, markers, parametrization over devices and loaders, and fixtures that read the session
object kept in the config's stash. Heavy imports (tinygrad, the devices) happen only when a test asks for a
device, so loading pytest with this plugin installed costs nothing.

Fixtures for users' own tests:
- ``mali_device``: a started device (session-scoped); tests that use it run once per ``--device``.
- ``loader_name``: tests that use it run once per ``--loader`` (default: every built-in variant).
- ``load(checkpoint, **job)``: runs one load job on ``mali_device`` with ``loader_name`` (or ``loader=``)
  and returns its :class:`harness.results.LoadResult`; every result is recorded for the report.
- ``make_checkpoint(model="tiny", **options)``: writes (once per session and options) a checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from harness.report import HarnessSession
    from harness.results import LoadResult

MARKERS = (
    "mali_hil_property(name): the suite property a test checks (numerics, memory-bound, oom, fit, idempotence, "
    "shards, corrupt-input); used to build the per-variant table",
    "needs_fp16: needs native fp16 on the device; skipped where the backend emulates it",
    "board_only: needs a physical Mali board; skipped on emulated and local devices",
    "slow: long-running; for nightly runs",
)
PHYSICAL_KINDS = ("ssh://", "board:")


def _session(config: pytest.Config) -> HarnessSession:
    from harness.report import SESSION_KEY

    return config.stash[SESSION_KEY]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mali-hil", "mali-hil: load ML weights on (emulated) Mali boards")
    group.addoption(
        "--device",
        action="append",
        default=[],
        dest="mali_hil_devices",
        metavar="DEVICE",
        help="where load jobs run: emulated-mali[:PROFILE[:RAM]] (default emulated-mali:mali-g610:3GiB), local. "
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
        type=float,
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
    parser.addini("mali_hil_devices", type="linelist", help="default --device values")
    parser.addini("mali_hil_loaders", type="linelist", help="default --loader values")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    from harness.hypothesis_profiles import register_profiles
    from harness.report import SESSION_KEY, HarnessSession

    register_profiles()
    session = HarnessSession.from_config(config)
    config.stash[SESSION_KEY] = session
    config.pluginmanager.register(session, "mali-hil-session")


def pytest_unconfigure(config: pytest.Config) -> None:
    from harness.report import SESSION_KEY

    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        session.close()
        config.pluginmanager.unregister(session)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    session = _session(metafunc.config)
    if "mali_device" in metafunc.fixturenames:
        metafunc.parametrize("mali_device", session.devices, indirect=True, scope="session")
    if "loader_name" in metafunc.fixturenames:
        metafunc.parametrize("loader_name", session.loaders, scope="session")


@pytest.fixture(scope="session")
def mali_device(request: pytest.FixtureRequest) -> Any:
    """A started device (see harness.devices) for the current ``--device`` parameter."""
    return _session(request.config).device(request.param)


@pytest.fixture(autouse=True)
def _mali_hil_item(request: pytest.FixtureRequest) -> None:
    """Per test: the device and loader as JUnit properties, and the markers' skips."""
    item = request.node
    properties: list[tuple[str, object]] = []
    marker = item.get_closest_marker("mali_hil_property")
    if marker is not None and marker.args:
        properties.append(("mali_hil.property", marker.args[0]))
    if "loader_name" in request.fixturenames:
        properties.append(("mali_hil.loader", request.getfixturevalue("loader_name")))
    if "mali_device" in request.fixturenames:
        device = request.getfixturevalue("mali_device")
        if item.get_closest_marker("board_only") and not device.spec.startswith(PHYSICAL_KINDS):
            pytest.skip(f"board_only: {device.spec} is not a physical board")
        facts = device.describe()
        if item.get_closest_marker("needs_fp16") and "native" not in facts.get("fp16", ""):
            pytest.skip(f"needs_fp16: {device.spec} has {facts.get('fp16', 'no fp16 fact')}")
        properties += [(f"mali_hil.{key}", value) for key, value in facts.items()]
    item.user_properties.extend(properties)


@pytest.fixture
def load(request: pytest.FixtureRequest, mali_device: Any) -> Callable[..., LoadResult]:
    """``load(checkpoint, loader=None, **job_fields) -> LoadResult``: one job on the current device."""
    from harness.jobs import LoadJob

    session = _session(request.config)
    default_loader = request.getfixturevalue("loader_name") if "loader_name" in request.fixturenames else "chunked"

    def run(checkpoint: str | Path, loader: str | None = None, **job_fields: Any) -> LoadResult:
        job_fields.setdefault("timeout_s", session.job_timeout)
        job = LoadJob(checkpoint=str(Path(checkpoint).resolve()), loader=loader or default_loader, **job_fields)
        result = mali_device.run(job)
        session.record(request.node.nodeid, result)
        return result

    return run


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Path]]:
    """``make_checkpoint(model="tiny", **options) -> Path``: written once per session for each set of options.

    Options are those of :func:`harness.checkpoints.make_checkpoint` (scale, seed, shards, dtype, fill, layers).
    A sharded checkpoint's path is its ``model.safetensors.index.json``.
    """
    from harness.checkpoints import make_checkpoint as make

    root = tmp_path_factory.mktemp("checkpoints")
    made: dict[tuple[Any, ...], Path] = {}

    def factory(model: str = "tiny", **options: Any) -> Path:
        key = (model, *sorted(options.items()))
        if key not in made:
            name = "-".join(str(part) for part in (model, *(f"{k}{v}" for k, v in sorted(options.items()))))
            shards = options.get("shards", 1)
            out = root / (name if shards > 1 else f"{name}.safetensors")
            checkpoint = make(model, out, **options)
            made[key] = checkpoint.index if shards > 1 and checkpoint.index else out
        return made[key]

    yield factory
