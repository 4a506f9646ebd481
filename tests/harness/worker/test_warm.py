"""What the worker prepares before it forks a job (mali_hil.harness.worker.warm): each job's fresh process starts
with tinygrad's default device chosen, its rewrite rules compiled and the backends it uses imported, instead of
paying for them itself (about 3 s and 48 MiB for the host-converting loaders before; README, "Threat model")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mali_hil.harness.checkpoints import make_checkpoint
from mali_hil.harness.devices import make_device
from mali_hil.harness.records.jobs import LoadJob
from mali_hil.harness.worker import warm

BOARD = "emulated-mali:mali-g610:512MiB"
PROBES = "tests.harness.worker.warm_probes"


def test_a_job_starts_with_the_default_device_chosen_and_the_rules_compiled(tmp_path: Path) -> None:
    """Catches: a worker that leaves tinygrad to choose its default device in each job (it opens NV's, AMD's and
    every other backend first), or that leaves the rewrite rules to be compiled on first use in every job."""
    tiny = tmp_path / "tiny.safetensors"
    make_checkpoint("tiny", tiny)
    with make_device(BOARD) as device:
        result = device.run(LoadJob(checkpoint=str(tiny), loader=f"{PROBES}:tells_what_was_warm"))
    assert result.error_type == "LookupError", result.error_message
    seen = json.loads(result.error_message or "")
    assert seen == {"default": warm.DEVICE, "deferred_rules": 0, "imported_by_default": []}


def test_a_default_device_the_user_chose_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEV", "CPU")
    warm.choose_default_device()
    assert warm.os.environ["DEV"] == "CPU"
    monkeypatch.delenv("DEV")
    warm.choose_default_device()
    assert warm.os.environ["DEV"] == warm.DEVICE
