"""``local``: this machine's own first OpenCL device, as it is (no layer, no RAM budget but the machine's own).

Useful on a real board running the suite itself, or to compare the emulator with the backend underneath. A
worker killed here is ``oom-killed`` only on the kernel's evidence (its OOM-kill counter), as on a board.
"""

from __future__ import annotations

from mali_hil.errors import DeviceSpecError
from mali_hil.harness.devices.board import Board
from mali_hil.harness.devices.device import Device
from mali_hil.harness.devices.spec import DeviceSpec
from mali_hil.harness.transports.local import LocalTransport


def make(spec: DeviceSpec) -> Device:
    if spec.target:
        raise DeviceSpecError(f"device {spec.text!r}: 'local' takes no options (write just --device=local)")
    return Device(Board(spec, physical=False), LocalTransport())
