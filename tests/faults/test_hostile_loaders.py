"""Issue 25, points 1-4: a loader that patches the worker, forges evidence, leaves state behind or escapes the job
gets the verdict it deserves or ``error``, and never changes a later job of another loader on the same device.

Before (main at a64acc3): the patched contract check and digest passed (and the contract check stayed patched in
the warm worker), a loader that replaced the meter was reported at its baseline, a reset of the layer's counters
hid the device peak, a forged layer exit file was an ``oom-killed``, a forged result line was an ``ok``, a changed
working folder and environment reached the next job, descriptors leaked to EMFILE made every later job an
``infra-error``, and a setsid'd grandchild was neither counted, nor ended, and held the protocol pipe.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mali_hil.harness.devices import Device, make_device
from mali_hil.harness.records.jobs import LoadJob
from mali_hil.harness.records.results import LoadResult, Status
from mali_hil.runtime.verdict import OomEvidence
from tests.faults.hostile_loaders import MIB, PIDFILE_ENV, POISON_ENV
from tests.faults.test_process_tree import alive, gone_soon

BOARD = "emulated-mali:mali-g610:512MiB"
LOADERS = "tests.faults.hostile_loaders"
FIGURE_SLACK = 24 * MIB  # RAM growth of two honest runs of the same job may differ by allocator noise


def job(tiny: Path, loader: str, timeout: float = 60) -> LoadJob:
    return LoadJob(checkpoint=str(tiny), loader=f"{LOADERS}:{loader}", timeout_s=timeout)


@pytest.fixture(scope="module")
def clean(tiny: Path) -> dict[str, LoadResult]:
    """The honest loader's record, and the cwd/env probe's, on a device of their own that ran nothing else."""
    with make_device(BOARD) as device:
        records = {loader: device.run(job(tiny, loader)) for loader in ("honest", "tells_cwd_and_env")}
    assert records["honest"].status is Status.OK, records["honest"].error_message
    return records


@pytest.fixture(scope="module")
def pids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hostile") / "pids"
    path.touch()
    return path


@pytest.fixture(scope="module")
def device(pids: Path) -> Iterator[Device]:
    """One device for every attack, as a session would have it: each test runs an honest job after its attack."""
    device = make_device(BOARD)
    device.env[PIDFILE_ENV] = str(pids)
    with device:
        yield device
    for pid in left_by(pids):
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def left_by(pids: Path) -> list[int]:
    return [int(line) for line in pids.read_text().split()]


def assert_like_clean(after: LoadResult, clean: LoadResult) -> None:
    """An honest job after an attack: the same verdict, values and device figures as on a device that ran nothing
    else, and RAM figures within allocator noise."""
    assert (after.status, after.digests, after.tensors, after.bytes_loaded) == (
        clean.status,
        clean.digests,
        clean.tensors,
        clean.bytes_loaded,
    ), after.error_message
    assert (after.device_peak_bytes, after.device_live_after) == (clean.device_peak_bytes, clean.device_live_after)
    assert after.ram_growth_bytes is not None and clean.ram_growth_bytes is not None
    assert abs(after.ram_growth_bytes - clean.ram_growth_bytes) <= FIGURE_SLACK, (after, clean)
    assert abs((after.ram_baseline_bytes or 0) - (clean.ram_baseline_bytes or 0)) <= FIGURE_SLACK


ALTERING = ["patches_the_contract_check", "patches_the_digest", "resets_the_layer_stats", "forges_a_result_line"]


@pytest.mark.parametrize("loader", ALTERING)
def test_a_loader_that_alters_the_harness_is_an_error_and_the_next_job_is_clean(
    device: Device, tiny: Path, clean: dict[str, LoadResult], loader: str
) -> None:
    starts = device.starts
    hostile = device.run(job(tiny, loader))
    assert (hostile.status, hostile.error_type) == (Status.ERROR, "HarnessAltered"), hostile
    assert "the loader altered the harness" in (hostile.error_message or "")
    assert_like_clean(device.run(job(tiny, "honest")), clean["honest"])
    assert device.starts == starts  # the worker was never replaced: it was never touched


def test_a_loader_that_replaces_the_meter_is_measured_all_the_same(
    device: Device, tiny: Path, clean: dict[str, LoadResult]
) -> None:
    hostile = device.run(job(tiny, "patches_the_meter_and_holds_memory"))
    assert hostile.status is Status.OK, hostile.error_message
    assert hostile.digests == clean["honest"].digests
    assert (hostile.ram_growth_bytes or 0) >= 48 * MIB  # on main: its baseline, about 0
    assert (hostile.device_peak_bytes or 0) >= 16 * MIB
    assert_like_clean(device.run(job(tiny, "honest")), clean["honest"])


def test_a_forged_layer_kill_is_not_an_oom_kill(device: Device, tiny: Path, clean: dict[str, LoadResult]) -> None:
    hostile = device.run(job(tiny, "forges_a_layer_kill"))
    assert (hostile.status, hostile.oom_evidence) == (Status.ERROR, None), hostile
    assert f"exit -{int(signal.SIGKILL)}" in (hostile.error_message or "")
    assert_like_clean(device.run(job(tiny, "honest")), clean["honest"])


def test_the_working_folder_and_environment_of_a_job_die_with_it(
    device: Device, tiny: Path, clean: dict[str, LoadResult]
) -> None:
    assert device.run(job(tiny, "changes_cwd_and_env")).status is Status.OK
    told = device.run(job(tiny, "tells_cwd_and_env"))
    assert json.loads(told.error_message or "") == json.loads(clean["tells_cwd_and_env"].error_message or "")
    assert json.loads(told.error_message or "")["poison"] is None
    assert_like_clean(device.run(job(tiny, "honest")), clean["honest"])
    assert POISON_ENV not in os.environ


def test_descriptors_leaked_to_emfile_die_with_the_job(
    device: Device, tiny: Path, clean: dict[str, LoadResult]
) -> None:
    starts = device.starts
    leaky = device.run(job(tiny, "leaks_descriptors_until_emfile"))
    assert leaky.status is Status.ERROR and "Too many open files" in (leaky.error_message or ""), leaky
    for _ in range(2):
        assert_like_clean(device.run(job(tiny, "honest")), clean["honest"])
    assert device.starts == starts


def test_a_daemon_holding_memory_counts_against_the_job_and_ends_with_it(
    device: Device, tiny: Path, pids: Path, clean: dict[str, LoadResult]
) -> None:
    pids.write_text("")
    hostile = device.run(job(tiny, "daemon_holds_memory"))
    assert (hostile.status, hostile.oom_evidence) == (Status.OOM_KILLED, OomEvidence.ENFORCER), hostile
    daemons = left_by(pids)
    assert daemons and gone_soon(daemons), "the setsid'd grandchild outlived its job"
    assert_like_clean(device.run(job(tiny, "honest")), clean["honest"])


def test_a_daemon_holding_the_pipes_neither_hangs_the_job_nor_outlives_it(
    device: Device, tiny: Path, pids: Path, clean: dict[str, LoadResult]
) -> None:
    pids.write_text("")
    starts = device.starts
    started = time.monotonic()
    hostile = device.run(job(tiny, "daemon_holds_the_pipes", timeout=5))
    took = time.monotonic() - started
    assert hostile.status is Status.OK, hostile.error_message
    assert took < 5, f"the job took {took:.1f} s: the daemon's pipes held it"
    daemons = left_by(pids)
    assert daemons and not any(alive(pid) for pid in daemons), "the setsid'd grandchild outlived its job"
    assert_like_clean(device.run(job(tiny, "honest")), clean["honest"])
    assert device.starts == starts
