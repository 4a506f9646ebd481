"""A pool of started devices: acquire one by spec (started on first use, warm after), release it, close all.

A device that cannot start is remembered with its first failure: every later acquire raises that same cause at
once, instead of hammering a broken board once per test (labgrid's ``never_retry``, for the same reason).
"""

from __future__ import annotations

from collections.abc import Callable

from mali_hil.errors import MaliHilError
from mali_hil.harness.devices.device import Device
from mali_hil.harness.devices.registry import make_device
from mali_hil.harness.devices.spec import DeviceSpec


class DeviceUnavailable(MaliHilError, RuntimeError):
    """A device could not be made or started; ``cause`` is the first failure, kept for every later acquire."""

    def __init__(self, spec: str, cause: str) -> None:
        super().__init__(f"device {spec} is unavailable: {cause}")
        self.spec, self.cause = spec, cause


class DevicePool:
    def __init__(self, make: Callable[[DeviceSpec], Device] = make_device) -> None:
        self._make = make
        self._devices: dict[str, Device] = {}
        self._failed: dict[str, str] = {}

    def acquire(self, spec: str | DeviceSpec) -> Device:
        """The started device for ``spec``; raises DeviceUnavailable (the first cause) when it cannot start."""
        key = str(spec).strip()
        if key in self._failed:
            raise DeviceUnavailable(key, self._failed[key])
        device = self._devices.get(key)
        try:
            if device is None:
                device = self._make(DeviceSpec.parse(spec))
                self._devices[key] = device
            device.start()
        except MaliHilError as exc:
            self._failed[key] = f"{type(exc).__name__}: {exc}"
            raise DeviceUnavailable(key, self._failed[key]) from None
        return device

    def release(self, spec: str | DeviceSpec, *, restart: bool = False) -> None:
        """Give ``spec`` back; with ``restart`` its worker is stopped, so the next acquire gets a fresh one."""
        device = self._devices.get(str(spec).strip())
        if device is not None and restart:
            device.stop()

    def failure(self, spec: str | DeviceSpec) -> str | None:
        """The remembered first failure of ``spec``, if it failed."""
        return self._failed.get(str(spec).strip())

    def close(self) -> None:
        """Stop every device (its worker and transport); the pool can be used again afterwards."""
        devices, self._devices = list(self._devices.values()), {}
        for device in devices:
            device.close()
