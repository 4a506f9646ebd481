"""``emulated-mali[:PROFILE[:RAM]]``: a warm worker on an emulated Mali board, on this machine.

The worker runs under the board's environment (our layer in front of PoCL) and the board's RAM budget. A
worker that dies mid-job was OOM-killed when the budget's enforcer killed it, or when it died by SIGKILL and
the layer's stats file shows a refused allocation (the layer's own kill, for profiles that fail that way).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from functools import cache
from pathlib import Path

from emulator.board import EmulatedBoard
from emulator.ram import RamEnforcer, select_enforcer
from harness.devices.base import Device, register_device
from harness.devices.worker_device import WorkerDevice

DEFAULT_PROFILE = "mali-g610:3GiB"


@cache
def backend_description() -> str:
    """PoCL's own platform version, asked in a process without the layer (the layer answers as the Mali)."""
    code = "from emulator.backend import backend_info as b; print(b().platform_version.split('  ')[0])"
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
        return out.stdout.strip()
    except (subprocess.SubprocessError, OSError):
        return "unknown OpenCL backend"


class EmulatedMali(WorkerDevice):
    def __init__(self, spec: str) -> None:
        super().__init__(spec)
        self.board = EmulatedBoard.from_spec(spec.partition(":")[2] or DEFAULT_PROFILE)
        self._stats_file = Path(tempfile.mkdtemp(prefix="mali-hil-device-")) / "layer-stats.json"

    def describe(self) -> dict[str, str]:
        return {**super().describe(), "profile": self.board.profile.spec, "backend": backend_description()}

    def worker_env(self) -> Mapping[str, str]:
        self._stats_file.unlink(missing_ok=True)  # a fresh worker writes its own at exit
        board = self.board.environ(self._stats_file)
        return {**super().worker_env(), **board, "MALI_HIL_BACKEND": backend_description()}

    def enforcer(self) -> RamEnforcer:
        return select_enforcer(self.board.ram_budget)

    def oom_evidence(self, returncode: int | None) -> str | None:
        if returncode != -signal.SIGKILL:
            return None
        try:
            refused = json.loads(self._stats_file.read_text()).get("failed_allocations", 0) > 0
        except (OSError, ValueError):
            return None
        return "SIGKILLed by the device's OOM behaviour (profile failure: oom-kill)" if refused else None


@register_device("emulated-mali")
def _make(spec: str) -> Device:
    return EmulatedMali(spec)
