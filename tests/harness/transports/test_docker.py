"""The docker device against a real engine (tests/dockerd.py: the running one, or Debian's dockerd started for the
session) and the real emulator image, built once per content by ``mali-hil emulator build-image``'s own code.
Skipped, with the reason, only where no engine can run a container at all.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mali_hil.emulator.image import BuiltImage, build_image, docker_client
from mali_hil.harness.checkpoints import make_checkpoint
from mali_hil.harness.devices import make_device
from mali_hil.harness.records.jobs import LoadJob
from mali_hil.harness.records.results import Status
from mali_hil.harness.transports.docker import CHECKPOINTS, OWNER_LABEL, DockerTransport, owner_label
from mali_hil.harness.values.oracles import expected_digests
from mali_hil.runtime.ram import Enforcement
from mali_hil.runtime.verdict import OomEvidence
from tests.dockerd import Engine
from tests.harness.transports.suite_verdicts import suite_verdicts
from tests.interrupt import interruptible

ROOT = Path(__file__).resolve().parents[3]
BOARD = "mali-g52:512MiB"


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    running = Engine().start()
    if running.problem is not None:
        pytest.skip(f"no Docker engine can run here: {running.problem}")
    yield running
    running.stop()  # only an engine this fixture started


@pytest.fixture(scope="module")
def image(engine: Engine) -> BuiltImage:
    """The emulator image of this checkout: built on first use, then found by its content hash."""
    return build_image()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ck") / "tiny.safetensors"
    make_checkpoint("tiny", path, fill="special")
    return path


def our_containers() -> list[object]:
    return docker_client().containers.list(all=True, filters={"label": f"{OWNER_LABEL}={owner_label()}"})


def test_a_load_in_a_container_matches_the_oracle_within_the_boards_limits(image: BuiltImage, tiny: Path) -> None:
    with make_device(f"docker:{BOARD}") as device:
        result = device.run(LoadJob(checkpoint=str(tiny)))
        facts = device.facts
        (container,) = our_containers()
        host = container.attrs["HostConfig"]
        # the checkpoint folder is read-only in the container, and the container has no network
        write = container.exec_run(["sh", "-c", f"touch {CHECKPOINTS}/x; ip link 2>/dev/null; cat /proc/net/dev"])
    assert result.status is Status.OK, result.error_message
    assert result.digests == expected_digests(tiny)
    assert result.checkpoint.startswith(f"{CHECKPOINTS}/")
    assert result.enforcement is Enforcement.CONTAINER and result.ram_budget_bytes == 512 << 20
    assert facts.enforcement is Enforcement.CONTAINER and facts.device_name == "Mali-G52"
    assert facts.fp16.value == image.fp16  # the worker in the image says what the image's own probe said
    assert host["Memory"] == 512 << 20 and host["MemorySwap"] == 512 << 20 and host["NetworkMode"] == "none"
    assert any(mount["Destination"] == CHECKPOINTS and not mount["RW"] for mount in container.attrs["Mounts"])
    output = write.output.decode()
    assert "Read-only file system" in output and "eth0" not in output, output
    assert our_containers() == [], "the container outlived its device"


def test_the_cgroup_kills_a_job_past_the_boards_ram_and_the_board_recovers(image: BuiltImage,
                                                                          tmp_path: Path) -> None:  # fmt: skip
    """exo's failure: naive holds the checkpoint twice on a 512 MiB board; the kernel's OOM killer in the
    container's memory cgroup ends it (no watchdog of ours), and the engine's OOMKilled is the evidence."""
    llama = tmp_path / "llama.safetensors"
    make_checkpoint("llama-3.2-1b", llama, scale=0.3, fill="constant")
    with make_device(f"docker:{BOARD}") as device:
        killed = device.run(LoadJob(checkpoint=str(llama), loader="naive", digests=False))
        after = device.run(LoadJob(checkpoint=str(llama), loader="chunked", digests=False))
    assert killed.status is Status.OOM_KILLED, killed.error_message
    assert killed.oom_evidence is OomEvidence.CONTAINER and "memory cgroup" in (killed.error_message or "")
    assert killed.enforcement is Enforcement.CONTAINER
    assert after.status is Status.OK, after.error_message  # a new container for the same board
    assert after.peak_unified_bytes is not None and after.peak_unified_bytes < 512 << 20
    assert our_containers() == []


def test_the_image_is_found_by_content_the_second_time(image: BuiltImage) -> None:
    again = build_image()
    assert again.cached and again.tag == image.tag and again.image_id == image.image_id
    assert again.fp16 in ("native", "emulated") and again.fp16 == image.fp16


def test_a_killed_harness_leaves_no_container_behind(image: BuiltImage, tiny: Path, tmp_path: Path) -> None:
    """SIGKILL to the harness mid-session: the attach connection ends, so the container's stdin does and its
    supervisor kills the worker; the next transport removes the dead run's container."""
    script = (
        "import sys, time\n"
        "from mali_hil.harness.devices import make_device\n"
        "from mali_hil.harness.records.jobs import LoadJob\n"
        f"device = make_device('docker:{BOARD}')\n"
        f"device.run(LoadJob(checkpoint={str(tiny)!r}))\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    harness = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=tmp_path)
    assert harness.stdout is not None and harness.stdout.readline().strip() == b"ready"
    label = f"{OWNER_LABEL}="
    client = docker_client()
    theirs = [c for c in client.containers.list(filters={"label": OWNER_LABEL})
              if c.labels[OWNER_LABEL].split("/")[1] == str(harness.pid)]  # fmt: skip
    assert len(theirs) == 1
    harness.send_signal(signal.SIGKILL)
    harness.wait()
    container = theirs[0]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        container.reload()
        if container.status != "running":
            break
        time.sleep(0.2)
    assert container.status != "running", "the worker's container runs on after its harness died"
    transport = DockerTransport()
    try:
        transport.client()
        assert container.name in transport.stale_removed
    finally:
        transport.close()
    left = [c for c in client.containers.list(all=True, filters={"label": label.rstrip("=")})
            if c.labels[OWNER_LABEL].split("/")[1] == str(harness.pid)]  # fmt: skip
    assert left == []


def test_no_image_for_this_build_is_a_clear_error(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    import mali_hil.emulator.image as image_module

    monkeypatch.delenv("MALI_HIL_DOCKER_IMAGE", raising=False)
    monkeypatch.setattr(image_module, "running_build", lambda: "0.0.0+hnosuchbuild")
    device = make_device(f"docker:{BOARD}")
    with pytest.raises(image_module.DockerError, match="mali-hil emulator build-image"):
        device.start()
    device.close()


# nightly: CI's docker job runs the whole suite on docker:mali-g610:3GiB on every push already
@pytest.mark.slow
def test_the_property_suite_gives_the_same_verdicts_in_a_container(image: BuiltImage, tmp_path: Path) -> None:
    """numerics, shards, idempotence and corrupt input for two variants, derandomized: the same verdicts in a
    container whose memory limit is the board's RAM as on this machine's emulated Mali of the same board."""
    in_docker = suite_verdicts("docker:mali-g52:2GiB", tmp_path / "docker.xml", tmp_path)
    here = suite_verdicts("emulated-mali:mali-g52:2GiB", tmp_path / "local.xml", tmp_path)
    assert in_docker == here
    assert sum(outcome == "passed" for outcome in here.values()) >= 25, json.dumps(here, indent=1)


def test_ctrl_c_mid_job_removes_the_container(image: BuiltImage, tmp_path: Path) -> None:
    """Ctrl-C while a job runs: the device stops (kills the job, not waiting for it) and its container goes."""
    llama = tmp_path / "llama.safetensors"
    make_checkpoint("llama-3.2-1b", llama, scale=0.3, fill="constant")
    script = (
        "from mali_hil.harness.devices import make_device\n"
        "from mali_hil.harness.records.jobs import LoadJob\n"
        "device = make_device('docker:mali-g52:2GiB')\n"
        "device.start()\n"
        "print('started', flush=True)\n"
        "try:\n"
        f"    while True: device.run(LoadJob(checkpoint={str(llama)!r}, loader='naive', digests=False))\n"
        "except KeyboardInterrupt:\n"
        "    device.close()\n"
        "    print('closed', flush=True)\n"
    )
    with interruptible([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=tmp_path) as harness:
        assert harness.stdout is not None and harness.stdout.readline().strip() == b"started"
        client = docker_client()
        mine = {"label": f"{OWNER_LABEL}"}
        assert [c for c in client.containers.list(filters=mine)
                if c.labels[OWNER_LABEL].split("/")[1] == str(harness.pid)]  # fmt: skip
        time.sleep(2.0)  # inside the first job
        harness.send_signal(signal.SIGINT)
        out, _ = harness.communicate(timeout=90)
    assert b"closed" in out and harness.returncode == 0
    left = [c for c in client.containers.list(all=True, filters=mine)
            if c.labels[OWNER_LABEL].split("/")[1] == str(harness.pid)]  # fmt: skip
    assert left == [], "a container outlived the interrupted harness"
