"""``docker[:PROFILE[:RAM]]``: the emulated Mali in a container, the board's RAM being the container's memory limit.

The worker runs in the emulator image (``mali-hil emulator build-image``) with ``mem_limit`` = the board's RAM and
no swap beyond it, so the unified-memory budget is the kernel's memory cgroup and an overrun meets the kernel's
OOM killer, with none of the watchdog's sampling gap. The image is the one built from the running mali-hil
(found by its label), or ``MALI_HIL_DOCKER_IMAGE``.
"""

from __future__ import annotations

from mali_hil.emulator.emulated_board import EmulatedBoard
from mali_hil.harness.devices.board import Board
from mali_hil.harness.devices.device import Device
from mali_hil.harness.devices.emulated import DEFAULT_PROFILE
from mali_hil.harness.devices.spec import DeviceSpec
from mali_hil.harness.transports.docker import DockerTransport


def make(spec: DeviceSpec) -> Device:
    target = spec.target or DEFAULT_PROFILE
    emulated = EmulatedBoard.from_spec(target)  # an unknown profile or impossible RAM fails here, at the edge
    board = Board(spec, physical=False, emulate=emulated, emulate_spec=target, ram_budget=emulated.ram_budget)
    return Device(board, DockerTransport())
