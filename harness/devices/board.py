"""What a device is, as data: the board (its spec, limits, whether it is emulated) and the facts a device states.

Nothing here starts a process; that is the transport's job (:mod:`mali_hil.harness.transports`). Facts are typed
(enums and byte counts) so that the plugin, the CLI and the suite read them instead of parsing spec strings or
asking which class a device is; text is made of them only in reports.
"""

from __future__ import annotations

from dataclasses import dataclass

from mali_hil.emulator.backend import Fp16Fidelity
from mali_hil.emulator.emulated_board import EmulatedBoard
from mali_hil.harness.devices.spec import DeviceSpec
from mali_hil.runtime.ram import Enforcement


@dataclass(frozen=True)
class Board:
    """A place load jobs run: a physical board, this machine's own device, or an emulated Mali on either.

    ``emulate`` is the emulated Mali the worker puts itself on (its profile and RAM), and ``emulate_spec`` the
    text the worker is given for it; ``ram_budget`` is the RAM (host memory and device buffers together: one
    pool on a Mali) the worker may use, enforced by the transport; None leaves the machine's own RAM and OOM
    killer in charge, as on a real board. ``leased``: the board is held through a lease (a labgrid place) for
    as long as the device lives.
    """

    spec: DeviceSpec
    physical: bool
    emulate: EmulatedBoard | None = None
    emulate_spec: str | None = None
    ram_budget: int | None = None
    leased: bool = False

    @property
    def one_worker(self) -> bool:
        """Only one worker of ours may be on this board at a time, so a run uses one device for it: a physical
        board's RAM is the memory under test (a second worker's would sit in every measured baseline), and a
        leased board is held once (a second lease of it would wait for the first, held by the same run)."""
        return self.physical or self.leased

    @property
    def cap_bytes(self) -> int | None:
        """The device memory the driver refuses past, where it is known before anything runs."""
        return self.emulate.profile.global_mem if self.emulate is not None else None

    @property
    def profile(self) -> str | None:
        return self.emulate.profile.spec if self.emulate is not None else None


@dataclass(frozen=True)
class DeviceFacts:
    """What a device states about itself: the board's limits, how its RAM is enforced, and what its worker saw
    (device name, backend, fp16; None and UNKNOWN until a worker has started)."""

    spec: str
    kind: str
    physical: bool
    emulated: bool
    profile: str | None
    cap_bytes: int | None
    ram_budget_bytes: int | None
    enforcement: Enforcement
    one_worker: bool = False  # see Board.one_worker
    device_name: str | None = None
    backend: str | None = None
    fp16: Fp16Fidelity = Fp16Fidelity.UNKNOWN

    def properties(self) -> dict[str, str]:
        """Flat text for JUnit properties and test reports (unknown facts left out)."""
        facts = {
            "device": self.spec,
            "profile": self.profile,
            "device_name": self.device_name,
            "backend": self.backend,
            "fp16": self.fp16.value,
            "enforcement": self.enforcement.value,
        }
        return {key: str(value) for key, value in facts.items() if value is not None}
