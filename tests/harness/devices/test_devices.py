"""Devices and workers: every way a job can end gives a typed result, and the device goes on serving.

These run real workers on the real emulated Mali; the misbehaving loaders are in odd_loaders.py.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mali_hil.emulator.backend import Fp16Fidelity
from mali_hil.errors import DeviceSpecError
from mali_hil.harness.checkpoints import make_checkpoint
from mali_hil.harness.devices import Board, Device, DeviceSpec, make_device
from mali_hil.harness.records.jobs import LoadJob
from mali_hil.harness.records.results import LoadResult, Status
from mali_hil.harness.transports.local import LocalTransport
from mali_hil.harness.values.oracles import expected_digests
from mali_hil.runtime.ram import Enforcement
from mali_hil.runtime.verdict import OomEvidence

ODD = "tests.harness.loaders.odd_loaders"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # of b"": a built layer that is empty


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ck") / "tiny.safetensors"
    make_checkpoint("tiny", path, fill="special")
    return path


@pytest.fixture(scope="module")
def board() -> Iterator[Device]:
    device = make_device("emulated-mali:mali-g52:256MiB")
    with device:
        yield device


@pytest.fixture(scope="module")
def roomy_board() -> Iterator[Device]:
    """For tests of what a loader returns, not of memory. On the 256 MiB board, one full run saw the float32
    loader OOM-killed at 335 MiB (not reproduced alone; most likely PoCL compiling the cast kernel in process)."""
    device = make_device("emulated-mali:mali-g52:1GiB")
    with device:
        yield device


def _job(checkpoint: Path, loader: str = "chunked", **fields: object) -> LoadJob:
    return LoadJob(checkpoint=str(checkpoint), loader=loader, **fields)  # type: ignore[arg-type]


def _ok_after(board: Device, tiny: Path) -> None:
    result = board.run(_job(tiny))
    assert result.status is Status.OK, result.error_message
    assert result.digests == expected_digests(tiny)


def test_a_load_is_measured_and_matches_the_oracle(board: Device, tiny: Path) -> None:
    result = board.run(_job(tiny))
    assert result.status is Status.OK, result.error_message
    assert result.digests == expected_digests(tiny)
    assert result.bytes_loaded == sum(d.nbytes for d in result.digests.values()) > 0
    assert result.device_peak_bytes == result.device_live_after == result.bytes_loaded  # chunked: final bytes only
    assert result.device_cap_bytes == board.facts.cap_bytes is not None
    assert result.ram_budget_bytes == 256 << 20 and result.enforcement is Enforcement.WATCHDOG
    assert result.fp16 in (Fp16Fidelity.NATIVE, Fp16Fidelity.EMULATED)
    assert LoadResult.from_dict(result.to_dict()) == result


def test_a_hung_job_times_out_and_the_next_one_runs(board: Device, tiny: Path) -> None:
    starts = board.starts
    began = time.monotonic()
    result = board.run(_job(tiny, f"{ODD}:hangs", timeout_s=3))
    assert result.status is Status.TIMEOUT and time.monotonic() - began < 30
    _ok_after(board, tiny)
    assert board.starts == starts + 1  # the hung worker was replaced


def test_a_crashing_worker_is_an_error_with_its_cause(board: Device, tiny: Path) -> None:
    result = board.run(_job(tiny, f"{ODD}:crashes"))
    # SIGABRT, not mistaken for an OOM kill; on the emulator a crash signal is the CPU backend's fault (a kernel's
    # out-of-bounds write ends in glibc's abort), not the loader's
    assert (result.status, result.error_type) == (Status.ERROR, "BackendCrash")
    assert "exit -6, SIGABRT, a backend fault" in (result.error_message or "")
    assert "the last it printed: pocl: Assertion `data != NULL' failed" in (result.error_message or "")
    _ok_after(board, tiny)


def test_a_raising_loader_keeps_the_worker(board: Device, tiny: Path) -> None:
    starts = board.starts
    result = board.run(_job(tiny, f"{ODD}:raises"))
    assert (result.status, result.error_type) == (Status.ERROR, "ValueError")
    assert "refuses on purpose" in (result.error_message or "")
    _ok_after(board, tiny)
    assert board.starts == starts


def test_passing_the_ram_budget_is_oom_killed(board: Device, tiny: Path) -> None:
    result = board.run(_job(tiny, f"{ODD}:hoards_host_memory"))
    assert result.status is Status.OOM_KILLED, result.error_message
    assert result.oom_evidence is OomEvidence.ENFORCER
    assert result.peak_unified_bytes is not None and result.peak_unified_bytes >= 256 << 20
    # the layer's last counters survive the kill: the record has device figures even for a killed job
    assert result.device_cap_bytes == board.facts.cap_bytes and result.device_peak_bytes is not None
    _ok_after(board, tiny)


def test_a_spike_the_watchdog_missed_is_still_oom_killed(monkeypatch: pytest.MonkeyPatch, tiny: Path) -> None:
    """The verdict must not depend on when the watchdog thread ran: blinded (one sample, then a 60 s sleep, as a
    thread starved on two busy cores is), a job that held 320 MiB on a 256 MiB board for 50 ms is still
    oom-killed, on the worker's own meter's evidence, and its worker is replaced as after any OOM kill."""
    from mali_hil.runtime import ram

    monkeypatch.setattr(ram._Sampler, "next_interval", lambda self, unified, growth: 60.0)
    with make_device("emulated-mali:mali-g52:256MiB") as device:
        result = device.run(_job(tiny, f"{ODD}:spikes_host_memory"))
        assert result.status is Status.OOM_KILLED, result.error_message
        assert result.oom_evidence is OomEvidence.METER and "worker's own meter" in (result.error_message or "")
        assert result.peak_unified_bytes is not None and result.peak_unified_bytes > 320 << 20
        assert result.digests == {} and result.tensors == 0  # nothing of a killed job counts as loaded
        assert device.starts == 1
        _ok_after(device, tiny)
        assert device.starts == 2


def test_a_device_that_lost_a_worker_keeps_the_next_one_started_and_leaves_none_behind(tiny: Path) -> None:
    """Catches: a spare worker that is started but never used (the next job starts yet another), one started for
    a device that never lost a worker (a single ``mali-hil load``), and one left running after close."""
    with make_device("emulated-mali:mali-g52:256MiB") as device:
        _ok_after(device, tiny)
        assert device._spare is None  # one worker so far: nothing suggests another will be needed
        assert device.run(_job(tiny, f"{ODD}:hoards_host_memory")).status is Status.OOM_KILLED
        _ok_after(device, tiny)
        assert device.starts == 2 and device._spare is not None
        spares = [device._spare._process.pid]
        assert device.run(_job(tiny, f"{ODD}:hoards_host_memory")).status is Status.OOM_KILLED
        _ok_after(device, tiny)
        assert device.starts == 3 and device._hello["pid"] == spares[0]  # the spare took the job
        assert device._spare is not None
        spares.append(device._spare._process.pid)
    assert spares[0] != spares[1] and not any(Path(f"/proc/{pid}").exists() for pid in spares)


def test_passing_the_device_cap_is_device_oom_with_the_numbers(board: Device, tiny: Path) -> None:
    result = board.run(_job(tiny, f"{ODD}:hoards_device_memory", lru=False))
    # On a unified-memory board the RAM budget and the device cap race; either ending is an OOM, never an error.
    assert result.status in (Status.DEVICE_OOM, Status.OOM_KILLED), result.error_message
    if result.status is Status.DEVICE_OOM:
        assert "needed" in (result.error_message or "") and "available" in (result.error_message or "")
        assert result.device_failed_allocations and result.device_peak_bytes <= result.device_cap_bytes
    _ok_after(board, tiny)


@pytest.mark.parametrize(
    ("loader", "error_type"),
    [("no-such-loader", "LoaderError"), ("no_module_here:fn", "LoaderError")],
)
def test_unknown_loaders_are_typed_errors(board: Device, tiny: Path, loader: str, error_type: str) -> None:
    result = board.run(_job(tiny, loader))
    assert (result.status, result.error_type) == (Status.ERROR, error_type)
    assert "chunked" in (result.error_message or "") or ":" in loader  # names what is available


def test_a_corrupt_checkpoint_is_refused_before_the_device(board: Device, tmp_path: Path, tiny: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(tiny.read_bytes()[:-7])
    result = board.run(_job(bad))
    assert result.status is Status.ERROR and result.error_type == "MetadataIncompleteBufferError"
    assert result.device_peak_bytes == result.device_live_before  # refused before any device allocation


def test_unknown_device_kind_lists_the_known_ones() -> None:
    with pytest.raises(DeviceSpecError, match="emulated-mali"):
        make_device("quantum-mali")


def test_a_worker_that_cannot_start_is_an_infra_error(tiny: Path) -> None:
    class NoPython(LocalTransport):
        def python(self) -> tuple[str, ...]:
            return ("/nonexistent/python",)

    result = Device(Board(DeviceSpec.parse("local"), physical=False), NoPython()).run(_job(tiny))
    assert result.status is Status.INFRA_ERROR and "could not start the worker" in (result.error_message or "")
    assert "/nonexistent/python" in (result.error_message or "")


def test_a_worker_without_its_layer_is_an_infra_error(tiny: Path, tmp_path: Path) -> None:
    """A broken layer (here an empty .so where the build cache says the layer is) leaves plain PoCL with no cap
    and no Mali identity: the worker must refuse to serve, not report ``ok`` with no device figures."""
    from mali_hil.emulator.build import layer_path

    cache = tmp_path / "cache"
    (cache / "mali-hil").mkdir(parents=True)
    (cache / "mali-hil" / layer_path().name).write_bytes(b"")  # what the worker will find and load
    (cache / "mali-hil" / f"{layer_path().name}.sha256").write_text(EMPTY_SHA256)  # as if built so: it passes the hash
    device = make_device("emulated-mali:mali-g52:256MiB")
    device.env["XDG_CACHE_HOME"] = str(cache)
    result = device.run(_job(tiny))
    device.close()
    assert result.status is Status.INFRA_ERROR, result
    assert "is not in front of the device" in (result.error_message or "")


def test_a_profile_value_cannot_inject_a_layer_config_line(tmp_path: Path) -> None:
    from mali_hil.emulator.profile import PROFILE_DIR
    from mali_hil.errors import ProfileError

    text = (PROFILE_DIR / "mali-g52.toml").read_text()
    assert '"Mali-G52"' in text
    hostile = tmp_path / "hostile.toml"
    hostile.write_text(text.replace('"Mali-G52"', '"Mali-G52\\nglobal_mem=99999999999999"', 1))
    with pytest.raises(ProfileError, match="control character"):
        make_device(f"emulated-mali:{hostile}:256MiB")


def test_doctor_loads_the_layer_instead_of_looking_at_the_file(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from mali_hil.emulator.build import layer_path

    cache = tmp_path / "cache"
    (cache / "mali-hil").mkdir(parents=True)
    (cache / "mali-hil" / layer_path().name).write_bytes(b"")
    (cache / "mali-hil" / f"{layer_path().name}.sha256").write_text(EMPTY_SHA256)
    done = subprocess.run([sys.executable, "-m", "mali_hil.harness.cli", "doctor"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "XDG_CACHE_HOME": str(cache)})  # fmt: skip
    layer = next(line for line in done.stdout.splitlines() if " layer " in line)
    assert done.returncode == 1 and layer.startswith("FAIL") and "did not load" in layer, done.stdout


def test_a_job_sees_only_the_emulated_device(tiny: Path, tmp_path: Path) -> None:
    """Another installed driver listed first (here a second copy of PoCL's ICD, given by the caller's
    OCL_ICD_VENDORS) would be tinygrad's device in a worker that is not pinned: the job must see one platform."""
    from mali_hil.emulator.backend import backend_icd
    from mali_hil.emulator.emulated_board import EmulatedBoard
    from mali_hil.emulator.launcher import run_on_board

    vendors = tmp_path / "vendors"
    vendors.mkdir()
    for name in ("aaa-other.icd", backend_icd().name):
        (vendors / name).write_text(backend_icd().read_text())
    code = "import pyopencl as cl; print(len(cl.get_platforms()), cl.get_platforms()[0].get_devices()[0].name)"
    run = run_on_board(EmulatedBoard.from_spec("mali-g52:256MiB"), [sys.executable, "-c", code],
                       env={"OCL_ICD_VENDORS": str(vendors)}, capture_output=True, timeout=120)  # fmt: skip
    assert (run.stdout or "").split(maxsplit=1) == ["1", "Mali-G52\n"], run.stderr


@pytest.mark.parametrize(
    ("loader", "says"),
    [
        ("returns_cpu_tensors", "not on the device under test CL"),
        ("returns_a_list", "returned list, not a dict"),
        ("returns_none", "returned NoneType, not a dict"),
        ("returns_numpy", "are not tinygrad Tensors"),
        ("returns_float32", "not in their stored shape and dtype (floats in float16 as the job asked"),
        ("returns_lazy", "1 tensors are not realized (lazy.weight)"),
    ],
)
def test_a_loader_that_breaks_its_contract_is_an_error_and_leaks_nothing(roomy_board: Device, tiny: Path,
                                                                         loader: str, says: str) -> None:  # fmt: skip
    """Before: CPU tensors passed as ``ok`` with a device peak of 0, and a list, None or numpy arrays were a
    harness ``infra-error`` whose tensors stayed live into the next job's baseline; unrealized tensors passed as
    ``ok`` with their memory taken after the job's figures (at the digest read-back, or never)."""
    idle = roomy_board.run(_job(tiny, digests=False)).device_live_before
    result = roomy_board.run(_job(tiny, f"{ODD}:{loader}"))
    assert (result.status, result.error_type) == (Status.ERROR, "LoaderContractError"), result.error_message
    assert says in (result.error_message or "")
    after = roomy_board.run(_job(tiny, digests=False))
    assert after.ok and after.device_live_before == idle, "the rejected tensors were still held by the next job"
