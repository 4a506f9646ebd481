"""``ssh://[user@]host[:port][?python=...&emulate=PROFILE[:RAM]&workdir=...]``: a board over SSH.

Without ``emulate`` the board's own OpenCL device is the device under test and the kernel's OOM killer is the
enforcement (an OOM kill is decided on the board, from the kernel's evidence); with it, the emulated Mali runs on
the board, its RAM budget watched there as it is on this machine.
"""

from __future__ import annotations

from mali_hil.emulator.emulated_board import EmulatedBoard
from mali_hil.emulator.profile import load_profile
from mali_hil.harness.devices.board import Board
from mali_hil.harness.devices.device import Device
from mali_hil.harness.devices.spec import DeviceSpec
from mali_hil.harness.transports.ssh import SshTransport
from mali_hil.harness.transports.ssh_target import SshTarget


def make(spec: DeviceSpec) -> Device:
    return on_target(spec, SshTarget.parse(spec.target))


def on_target(spec: DeviceSpec, target: SshTarget) -> Device:
    """The device for a board at ``target`` (from an ``ssh://`` URL, or a labgrid place's service), named ``spec``."""
    return Device(board_of(spec, target), SshTransport(target), retries=target.retries)


def board_of(spec: DeviceSpec, target: SshTarget) -> Board:
    emulated = None
    if target.emulate is not None:
        profile = load_profile(target.emulate)  # an unknown profile fails here; the board's RAM is checked there
        emulated = EmulatedBoard(profile, profile.job_budget())
    if target.expect is not None:
        load_profile(target.expect)
    return Board(spec, physical=emulated is None, emulate=emulated, emulate_spec=target.emulate,
                 ram_budget=None if emulated is None else emulated.ram_budget)  # fmt: skip


def one_worker(spec: DeviceSpec) -> bool:
    return board_of(spec, SshTarget.parse(spec.target)).one_worker


make.one_worker = one_worker  # type: ignore[attr-defined]  # see mali_hil.harness.devices.registry
