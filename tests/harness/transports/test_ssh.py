"""The SSH device against real OpenSSH servers on 127.0.0.1 (tests/sshd.py), each acting as a board that runs the
emulated Mali (``emulate=``). All boards of this module share one work folder, as boards of one machine would
share a disk: mali-hil is installed there once.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mali_hil.errors import DeviceSpecError, ProfileError
from mali_hil.harness.checkpoints import make_checkpoint
from mali_hil.harness.devices import Device, DevicePool, DeviceSpec, DeviceUnavailable, make_device
from mali_hil.harness.devices.ssh import make as make_ssh
from mali_hil.harness.records.jobs import LoadJob
from mali_hil.harness.records.results import Status
from mali_hil.harness.transports.ssh import HostKeyError, SshError, SshTransport
from mali_hil.harness.transports.ssh_target import SshTarget
from mali_hil.harness.values.oracles import expected_digests
from mali_hil.runtime.verdict import OomEvidence
from tests.harness.loaders import odd_loaders
from tests.harness.transports.suite_verdicts import suite_verdicts
from tests.interrupt import interruptible
from tests.sshd import LoopbackBoard, running_board, sshd_available, watch_workers

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.skipif(sshd_available() is not None, reason=str(sshd_available()))
ROOT = Path(__file__).resolve().parents[3]
ODD = "tests.harness.loaders.odd_loaders"
EMULATE = "mali-g52:512MiB"


@pytest.fixture(scope="module")
def disk(board_disk: Path) -> Path:
    return board_disk


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory, disk: Path) -> Iterator[LoopbackBoard]:
    with running_board(tmp_path_factory.mktemp("sshd"), "a", disk) as server:
        yield server


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ck") / "tiny.safetensors"
    make_checkpoint("tiny", path, fill="special")
    return path


def ssh_device(url: str) -> Device:
    """The ssh kind's own device, with this checkout on the board's PYTHONPATH so that the odd loaders of the
    tests import there (a user's loaders would be installed on the board)."""
    device = make_ssh(DeviceSpec.parse(url))
    device.env["PYTHONPATH"] = str(ROOT)
    return device


def test_a_load_over_ssh_matches_the_oracle_and_a_second_run_reuses_the_board(board: LoopbackBoard, tiny: Path,
                                                                               tmp_path: Path) -> None:  # fmt: skip
    url = board.url(emulate=EMULATE)
    with make_device(url) as first:
        result = first.run(LoadJob(checkpoint=str(tiny)))
        transport = first.transport
        assert isinstance(transport, SshTransport)
        sent_first = transport.sent_bytes
    assert result.status is Status.OK, result.error_message
    assert result.digests == expected_digests(tiny)
    assert result.checkpoint.startswith(f"{board.workdir}/checkpoints/") and result.checkpoint != str(tiny)
    assert result.device == url and result.device_cap_bytes is not None and result.ram_budget_bytes == 512 << 20
    assert sent_first in (0, tiny.stat().st_size)  # 0 when an earlier test of this module had sent it
    with make_device(url) as second:
        again = second.run(LoadJob(checkpoint=str(tiny)))
        assert isinstance(second.transport, SshTransport)
        assert not second.transport.installed, "the second run installed mali-hil again"
        assert second.transport.sent_bytes == 0, "the second run sent the checkpoint again"
    assert again.status is Status.OK and again.digests == result.digests


def test_a_changed_host_key_is_refused_with_the_file_to_fix(tmp_path: Path, disk: Path, tiny: Path) -> None:
    server = LoopbackBoard(tmp_path / "sshd", "changed")
    server.workdir = disk
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    server.trust_host_key(other.with_suffix(".pub"))  # known_hosts holds another key for this host and port
    server.start()
    try:
        device = make_device(server.url(emulate=EMULATE, connect_timeout="2"))
        with pytest.raises(HostKeyError, match="known_hosts") as refused:
            device.start()
        assert str(server.known_hosts) in str(refused.value) and "never turns host key checking off" in str(
            refused.value
        )
        server.known_hosts.write_text("")  # an unknown host is refused too, never accepted on first sight
        with pytest.raises(HostKeyError):
            make_device(server.url(emulate=EMULATE, connect_timeout="2")).start()
        result = make_device(server.url(emulate=EMULATE, connect_timeout="2")).run(LoadJob(checkpoint=str(tiny)))
        assert result.status is Status.INFRA_ERROR and "host key" in (result.error_message or "")
    finally:
        server.stop()


def test_an_oom_kill_on_the_board_is_oom_killed(board: LoopbackBoard, tmp_path: Path) -> None:
    """exo's failure on a 512 MiB board: naive holds the whole checkpoint twice and is killed there, by the
    board's own watchdog; the verdict and the peak come back from the board's supervisor."""
    llama = tmp_path / "llama.safetensors"
    make_checkpoint("llama-3.2-1b", llama, scale=0.3, fill="constant")
    with make_device(board.url(emulate=EMULATE)) as device:
        killed = device.run(LoadJob(checkpoint=str(llama), loader="naive", digests=False))
        after = device.run(LoadJob(checkpoint=str(llama), loader="chunked", digests=False))
    assert killed.status is Status.OOM_KILLED, killed.error_message
    assert "RAM budget's enforcer" in (killed.error_message or "") and killed.oom_evidence is OomEvidence.ENFORCER
    assert killed.peak_unified_bytes is not None and killed.peak_unified_bytes > 512 << 20
    assert after.status is Status.OK, after.error_message  # a new worker on the same board


def test_a_dropped_connection_is_retried_and_then_completes(tmp_path: Path, disk: Path, tiny: Path) -> None:
    server = LoopbackBoard(tmp_path / "sshd", "flaky")
    server.workdir = disk
    server.start()
    device = ssh_device(server.url(emulate=EMULATE, retries="2"))
    try:
        before = device.run(LoadJob(checkpoint=str(tiny)))
        assert before.ok, before.error_message

        def drop_then_return() -> None:
            time.sleep(odd_loaders.SLOW_SECONDS / 2)
            server.stop()  # every connection of the board drops, mid-job
            server.start()

        dropper = threading.Thread(target=drop_then_return)
        dropper.start()
        result = device.run(LoadJob(checkpoint=str(tiny), loader=f"{ODD}:slow"))
        dropper.join()
        assert result.status is Status.OK, result.error_message
        assert device.lost == 1 and result.digests == expected_digests(tiny)
    finally:
        device.close()
        server.stop()
    assert server.board_processes() == [], "the dropped worker outlived its connection"


def test_a_board_that_stays_down_is_an_infra_error_after_retries(tmp_path: Path, disk: Path, tiny: Path) -> None:
    server = LoopbackBoard(tmp_path / "sshd", "down")
    server.workdir = disk
    server.start()
    device = ssh_device(server.url(emulate=EMULATE, retries="1", connect_timeout="2"))
    results = []
    try:
        results.append(device.run(LoadJob(checkpoint=str(tiny))))
        threading.Timer(odd_loaders.SLOW_SECONDS / 2, server.stop).start()
        results.append(device.run(LoadJob(checkpoint=str(tiny), loader=f"{ODD}:slow")))
    finally:
        device.close()
        server.stop()
    assert results[0].ok, "the job before the drop is kept as it ended"
    assert results[1].status is Status.INFRA_ERROR and device.lost >= 1, results[1].error_message
    assert "Connection refused" in (results[1].error_message or "") or "lost the worker" in (
        results[1].error_message or ""
    )


def test_ctrl_c_leaves_the_board_clean(board: LoopbackBoard, tiny: Path, tmp_path: Path) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(ROOT)!r})
            from mali_hil.harness.records.jobs import LoadJob
            from tests.harness.transports.test_ssh import ssh_device
            with ssh_device({board.url(emulate=EMULATE)!r}) as device:
                print("started", flush=True)
                device.run(LoadJob(checkpoint={str(tiny)!r}, loader="{ODD}:hangs"))
            """
        )
    )
    with interruptible([sys.executable, str(driver)], stdout=subprocess.PIPE, text=True, cwd=tmp_path) as proc:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 60
        while not any("mali_hil.harness.worker" in line for line in board.board_processes()):
            assert time.monotonic() < deadline, "the worker never started on the board"
            time.sleep(0.1)
        time.sleep(1.0)  # the job is running now
        interrupted = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) != 0
        assert time.monotonic() - interrupted < 15, "Ctrl-C took too long"
    deadline = time.monotonic() + 15
    while board.board_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert board.board_processes() == [], "processes left on the board after Ctrl-C"
    assert list((board.workdir / "tmp").iterdir()) == [], "temporary files left on the board"


@pytest.mark.parametrize(
    "url",
    [
        "ssh://-oProxyCommand=touch%20x",
        "ssh://a;b@host",
        "ssh://user:secret@host",
        "ssh://host?workdir=relative/path",
        "ssh://host?bogus=1",
        "ssh://host?retries=nan",
        "ssh://host?connect_timeout=inf",
        "ssh://host:99999",
        "ssh://host?emulate=mali-g999",
        "ssh://host?python=",
    ],
)
def test_hostile_or_malformed_urls_are_refused_at_the_edge(url: str) -> None:
    with pytest.raises((DeviceSpecError, ProfileError)) as refused:
        make_device(url)
    assert "device" in str(refused.value) or "profile" in str(refused.value)


def test_no_value_reaches_the_board_shell_unquoted(board: LoopbackBoard, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    hostile = f"a b;touch {marker} $(touch {marker}) `touch {marker}` '\" && touch {marker}"
    transport = SshTransport(SshTarget.parse(board.url()))
    try:
        echoed = transport.run(["printf", "%s", hostile]).stdout.decode()
        assert echoed == hostile
        hostile_python = SshTransport(SshTarget.parse(board.url(python=f"python3;touch {marker}")))
        with pytest.raises(SshError, match="no Python"):
            hostile_python.connect()
        hostile_python.close()
    finally:
        transport.close()
    assert not marker.exists(), "a value was run by the board's shell"


def test_an_unhealthy_board_is_miss_not_fail(pytester: pytest.Pytester, board: LoopbackBoard) -> None:
    pytester.makepyfile(test_user="def test_x(load, make_checkpoint):\n    load(make_checkpoint('tiny'))\n")
    url = board.url(emulate="mali-g52:1TiB")  # more RAM than the board has: its health check says so
    result = pytester.runpytest_subprocess(f"--device={url}", "--loader=chunked", "--junitxml=j.xml",
                                           "-p", "no:cacheprovider")  # fmt: skip
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*MISS: device ssh://* is unavailable: SshError: * is not healthy*"])
    assert 'name="mali_hil.outcome" value="MISS"' in (pytester.path / "j.xml").read_text()


def test_the_pool_remembers_an_unreachable_board(tmp_path: Path) -> None:
    server = LoopbackBoard(tmp_path / "sshd", "never-started")
    pool = DevicePool()
    started = time.monotonic()
    for _ in range(2):
        with pytest.raises(DeviceUnavailable, match="Connection refused"):
            pool.acquire(server.url(emulate=EMULATE, connect_timeout="2"))
    assert time.monotonic() - started < 20, "the second acquire tried the board again"
    pool.close()


# a minute of the default run's 15: nightly, beside the whole suite over ssh:// (CI's every push keeps the
# ssh tests of one load, an OOM kill, retries and Ctrl-C)
@pytest.mark.slow
def test_the_property_suite_gives_the_same_verdicts_over_ssh(board: LoopbackBoard, tmp_path: Path) -> None:
    """numerics, shards, idempotence and corrupt-input for two variants: the same examples (derandomized), the
    same verdicts on the board over SSH as on this machine's emulated Mali of the same profile and size."""
    over_ssh = suite_verdicts(board.url(emulate="mali-g52:2GiB"), tmp_path / "ssh.xml", tmp_path)
    here = suite_verdicts("emulated-mali:mali-g52:2GiB", tmp_path / "local.xml", tmp_path)
    assert over_ssh == here
    assert sum(outcome == "passed" for outcome in here.values()) >= 25, here


def test_a_board_without_sftp_gets_its_files_through_the_ssh_channel(tmp_path: Path, disk: Path, tiny: Path) -> None:
    """dropbear and minimal images have no SFTP subsystem: scp (SFTP since OpenSSH 9) fails there with
    'Connection closed'; the checkpoint and a wheel-sized file still reach the board whole, through the channel."""
    with running_board(tmp_path / "sshd", "nosftp", disk, sftp=False) as server:
        plain = subprocess.run(["scp", "-F", str(server.ssh_config), "-o", "BatchMode=yes", str(tiny),
                                f"{server.alias}:{tmp_path / 'x'}"], capture_output=True, text=True)  # fmt: skip
        assert plain.returncode != 0 and "Connection closed" in plain.stderr  # the board really has no SFTP
        fresh = tmp_path / "fresh.safetensors"  # content this module's boards have not had yet
        make_checkpoint("tiny", fresh, seed=12345)
        with make_device(server.url(emulate=EMULATE)) as device:
            result = device.run(LoadJob(checkpoint=str(fresh)))
            transport = device.transport
            assert isinstance(transport, SshTransport)
            blob = tmp_path / "blob.whl"
            blob.write_bytes(bytes(range(256)) * 4099)
            transport.copy(blob, f"{tmp_path}/copied.whl")
        assert result.status is Status.OK, result.error_message
        assert result.digests == expected_digests(fresh) and transport.sent_bytes == fresh.stat().st_size
        assert transport.file_transfer == "ssh channel (cat)"
        assert (tmp_path / "copied.whl").read_bytes() == blob.read_bytes()
        assert not list(tmp_path.glob("copied.whl.part-*")), "a partial file was left behind"


@pytest.mark.slow
def test_the_whole_suite_passes_on_a_board_without_emulate(board: LoopbackBoard, tmp_path: Path) -> None:
    """The whole property suite (no -k, every loader) on the board's own OpenCL device (PoCL here, standing in for
    its Mali; no RAM budget of ours, the kernel's OOM killer): it passes, and the measured jobs run on the
    session's device, one worker of ours on the board at a time (a second would sit in every measured baseline).
    Nightly: it takes minutes."""
    from mali_hil.harness.plugin.suite import suite_path

    argv = [sys.executable, "-m", "pytest", str(suite_path()), f"--device={board.url()}", "-q", "-p",
            "no:cacheprovider", "-p", "no:xdist", f"--junitxml={tmp_path / 'suite.xml'}"]  # fmt: skip
    done, seen = threading.Event(), []
    watcher = threading.Thread(target=watch_workers, args=(board, done, seen), daemon=True)
    watcher.start()
    try:
        finished = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=3600)
    finally:
        done.set()
        watcher.join(5)
    assert finished.returncode == 0, finished.stdout[-4000:] + finished.stderr[-2000:]
    assert seen and max(seen) == 1, f"workers on the board at once: {max(seen, default=0)}"
