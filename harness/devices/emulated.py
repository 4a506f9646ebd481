"""``emulated-mali[:PROFILE[:RAM]]``: an emulated Mali board on this machine.

The worker puts itself on the board (our OpenCL layer in front of PoCL, the profile's identity and cap) and the
local transport keeps it within the board's RAM (a watchdog, or a delegated cgroup or container limit).
"""

from __future__ import annotations

from mali_hil.emulator.emulated_board import EmulatedBoard
from mali_hil.harness.devices.board import Board
from mali_hil.harness.devices.device import Device
from mali_hil.harness.devices.registry import DEFAULT_DEVICE
from mali_hil.harness.devices.spec import DeviceSpec
from mali_hil.harness.transports.local import LocalTransport

DEFAULT_PROFILE = DeviceSpec.parse(DEFAULT_DEVICE).target  # a bare `emulated-mali` is the default board


def make(spec: DeviceSpec) -> Device:
    target = spec.target or DEFAULT_PROFILE
    emulated = EmulatedBoard.from_spec(target)  # an unknown profile or impossible RAM fails here, at the edge
    board = Board(spec, physical=False, emulate=emulated, emulate_spec=target, ram_budget=emulated.ram_budget)
    return Device(board, LocalTransport())
