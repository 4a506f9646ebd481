"""The seam under the devices: specs parsed once, kinds from outside the package, the device pool, the job
protocol over a real channel, and how a dead worker's end is judged (evidence, not its exit code).

The toy device kind below is defined here, in a test module, and reaches the harness only through the public
registration call: it runs the emulated Mali on this machine, but its transport copies each checkpoint into a
folder of its own (as a remote board's disk would be) and the worker loads that copy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from mali_hil.emulator.emulated_board import EmulatedBoard
from mali_hil.errors import DeviceSpecError, WorkerError
from mali_hil.harness.checkpoints import make_checkpoint
from mali_hil.harness.devices import (
    Board,
    Device,
    DevicePool,
    DeviceSpec,
    DeviceUnavailable,
    device_kinds,
    make_device,
    register_device,
    unregister_device,
)
from mali_hil.harness.records.jobs import LoadJob
from mali_hil.harness.records.results import Status
from mali_hil.harness.transports.local import LocalTransport
from mali_hil.harness.values.oracles import expected_digests
from mali_hil.harness.worker.protocol import WorkerClient
from mali_hil.runtime.ram import Enforcement

pytest_plugins = ["pytester"]


class CopyingTransport(LocalTransport):
    """This machine, but with a disk of its own: checkpoints are copied in, named by content."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def place(self, path: Path) -> str:
        source = Path(path).resolve()
        digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
        target = self.root / digest / source.name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        return str(target)


def make_toy(spec: DeviceSpec, root: Path) -> Device:
    emulated = EmulatedBoard.from_spec(spec.target)
    board = Board(spec, physical=False, emulate=emulated, emulate_spec=spec.target, ram_budget=emulated.ram_budget)
    return Device(board, CopyingTransport(root))


@pytest.fixture
def toy_kind(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "toy-disk"
    register_device("toy", lambda spec: make_toy(spec, disk))
    try:
        yield disk
    finally:
        unregister_device("toy")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ck") / "tiny.safetensors"
    make_checkpoint("tiny", path, fill="special")
    return path


def test_a_kind_from_a_test_module_runs_a_load_end_to_end(toy_kind: Path, tiny: Path) -> None:
    assert "toy" in device_kinds()
    with make_device("toy:mali-g52:256MiB") as device:
        facts = device.facts
        result = device.run(LoadJob(checkpoint=str(tiny), loader="chunked"))
    assert result.status is Status.OK, result.error_message
    assert Path(result.checkpoint).is_relative_to(toy_kind), f"the worker loaded {result.checkpoint}, not the copy"
    assert result.digests == expected_digests(tiny)
    assert result.device == "toy:mali-g52:256MiB" and result.device_cap_bytes == facts.cap_bytes
    assert (facts.kind, facts.emulated, facts.physical, facts.enforcement) == ("toy", True, False, Enforcement.WATCHDOG)
    assert facts.device_name == "Mali-G52"  # from the worker's hello, through the layer


def test_a_kind_registered_twice_is_refused(toy_kind: Path) -> None:
    with pytest.raises(DeviceSpecError, match="registered twice"):
        register_device("toy", lambda spec: make_toy(spec, toy_kind))
    with pytest.raises(DeviceSpecError, match="registered twice"):
        register_device("local", lambda spec: make_toy(spec, toy_kind))  # a built-in's entry point


def test_the_plugin_runs_a_users_kind(pytester: pytest.Pytester) -> None:
    """A user's conftest registers the kind; ``--device`` picks it; ``load`` runs on it; JUnit says which kind."""
    pytester.makeconftest(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(Path(__file__).resolve().parents[3])!r})
            from pathlib import Path
            from mali_hil.harness.devices import register_device
            from tests.harness.transports.test_transport_seam import make_toy

            register_device("toy", lambda spec: make_toy(spec, Path("toy-disk").resolve()))
            """
        )
    )
    pytester.makepyfile(
        test_user="""
        from pathlib import Path
        from mali_hil.harness.records.results import Status

        def test_loads_on_the_toy(load, make_checkpoint):
            result = load(make_checkpoint("tiny"))
            assert result.status is Status.OK and "toy-disk" in Path(result.checkpoint).parts
        """
    )
    result = pytester.runpytest_subprocess("--device=toy:mali-g52:256MiB", "--loader=mmap", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*mali-hil: devices toy:mali-g52:256MiB; loaders mmap*"])


@pytest.mark.parametrize(
    ("text", "kind", "target"),
    [
        ("emulated-mali:mali-g610:3GiB", "emulated-mali", "mali-g610:3GiB"),
        ("emulated-mali", "emulated-mali", ""),
        ("local", "local", ""),
        ("ssh://pi@board:2222?emulate=mali-g52:2GiB", "ssh", "ssh://pi@board:2222?emulate=mali-g52:2GiB"),
        ("  local ", "local", ""),
    ],
)
def test_specs_are_parsed_once_into_kind_and_target(text: str, kind: str, target: str) -> None:
    spec = DeviceSpec.parse(text)
    assert (spec.kind, spec.target, str(spec)) == (kind, target, text.strip())


@pytest.mark.parametrize("text", ["", "   ", "Emulated:x", ":mali-g610", "local\nmali", "9lives", "a b:c"])
def test_malformed_specs_are_refused(text: str) -> None:
    with pytest.raises(DeviceSpecError):
        DeviceSpec.parse(text)


def test_local_takes_no_options() -> None:
    with pytest.raises(DeviceSpecError, match="takes no options"):
        make_device("local:junk")


def test_an_unknown_kind_on_the_command_line_stops_pytest_at_once(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user="def test_x(load):\n    raise AssertionError('must not run')\n")
    result = pytester.runpytest_subprocess("--device=quantum-mali:x", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--device: unknown device 'quantum-mali:x': known kinds are *emulated-mali, *local*"])


def test_the_pool_remembers_the_first_failure() -> None:
    made: list[str] = []

    def make(spec: DeviceSpec) -> Device:
        made.append(spec.text)
        return make_device(spec)

    pool = DevicePool(make)
    for _ in range(3):
        with pytest.raises(DeviceUnavailable, match="ProfileError: unknown profile 'mali-g999'") as caught:
            pool.acquire("emulated-mali:mali-g999")
        assert caught.value.spec == "emulated-mali:mali-g999"
    assert made == ["emulated-mali:mali-g999"]  # tried once, not once per acquire
    assert pool.failure("emulated-mali:mali-g999") is not None
    pool.close()


def test_the_pool_keeps_one_warm_worker_per_spec(tiny: Path) -> None:
    pool = DevicePool()
    try:
        first = pool.acquire("emulated-mali:mali-g52:256MiB")
        assert pool.acquire("emulated-mali:mali-g52:256MiB") is first and first.starts == 1
        pool.release("emulated-mali:mali-g52:256MiB", restart=True)
        assert pool.acquire("emulated-mali:mali-g52:256MiB").run(LoadJob(checkpoint=str(tiny))).ok
        assert first.starts == 2
    finally:
        pool.close()


# --- the job protocol, spoken by real processes that misbehave --------------------------------------------------


def _fake_worker(body: str) -> tuple[str, ...]:
    prelude = "import json, sys\nsay = lambda m: print(json.dumps(m), flush=True)\n"
    return (sys.executable, "-c", prelude + textwrap.dedent(body))


def test_an_answer_for_another_job_is_refused() -> None:
    channel = LocalTransport().spawn(
        _fake_worker(
            """
            say({"op": "hello", "protocol": 2, "device_name": "x", "fp16": "native", "backend": ""})
            for line in sys.stdin:
                request = json.loads(line)
                say({"op": "result", "id": request["id"] + 1, "result": {}})
            """
        ),
        {},
        ram_budget=None,
    )
    try:
        client = WorkerClient(channel, start_timeout=30)
        with pytest.raises(WorkerError, match="answered job 2 where job 1 was due"):
            client.load({"checkpoint": "x"}, timeout=30)
    finally:
        channel.end(grace=5)


def test_a_worker_of_another_protocol_is_refused() -> None:
    channel = LocalTransport().spawn(_fake_worker('say({"op": "hello", "pid": 1})'), {}, ram_budget=None)
    try:
        with pytest.raises(WorkerError, match="speaks protocol None"):
            WorkerClient(channel, start_timeout=30)
    finally:
        channel.end(grace=5)


def test_a_worker_that_cannot_set_up_its_board_says_why(tiny: Path) -> None:
    """The worker puts itself on the board: a board it cannot make is an infra-error with the worker's reason."""
    spec = DeviceSpec.parse("emulated-mali:mali-g52:256MiB")
    board = Board(spec, physical=False, emulate_spec="mali-g999")  # what a stale remote profile list would do
    result = Device(board, LocalTransport()).run(LoadJob(checkpoint=str(tiny)))
    assert result.status is Status.INFRA_ERROR
    assert "could not set up its device: ProfileError: unknown profile 'mali-g999'" in (result.error_message or "")


def test_a_sigkill_from_outside_is_not_an_oom_kill_on_local(tiny: Path) -> None:
    """Without a budget of ours, only the kernel's own OOM-kill counter makes a SIGKILL an OOM kill."""
    with make_device("local") as device:
        result = device.run(LoadJob(checkpoint=str(tiny), loader=f"{__name__}:kills_itself"))
    assert (result.status, result.error_type) == (Status.ERROR, "WorkerDied"), result.error_message
    assert f"exit -{int(signal.SIGKILL)}" in (result.error_message or "")
    assert result.enforcement is Enforcement.KERNEL and result.ram_budget_bytes is None


def kills_itself(checkpoint: object, device: str, options: object) -> dict[str, object]:
    os.kill(os.getpid(), signal.SIGKILL)
    return {}
