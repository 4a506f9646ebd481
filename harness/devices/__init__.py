"""Devices that run load jobs: a board (data) reached through a transport (behaviour), with a warm worker.

Kinds come from the entry point group ``mali_hil.devices`` (the built-ins ``emulated-mali`` and ``local`` too) or
from :func:`register_device`. Importing this package imports no tinygrad, numpy or OpenCL.
"""

from typing import TYPE_CHECKING

from mali_hil._lazy import lazy_exports

# Imported on first use (PEP 562): the plugin reads the default device from the registry at pytest's start,
# which must not import the device machinery for projects that never use it.
_LAZY = {
    "Board": "board", "DeviceFacts": "board", "Device": "device", "DevicePool": "pool",
    "DeviceUnavailable": "pool", "DEFAULT_DEVICE": "registry", "ENTRY_POINT_GROUP": "registry",
    "device_kinds": "registry", "make_device": "registry", "register_device": "registry",
    "unregister_device": "registry", "DeviceSpec": "spec",
}  # fmt: skip

if TYPE_CHECKING:
    from mali_hil.harness.devices.board import Board, DeviceFacts
    from mali_hil.harness.devices.device import Device
    from mali_hil.harness.devices.pool import DevicePool, DeviceUnavailable
    from mali_hil.harness.devices.registry import (
        DEFAULT_DEVICE,
        ENTRY_POINT_GROUP,
        device_kinds,
        make_device,
        register_device,
        unregister_device,
    )
    from mali_hil.harness.devices.spec import DeviceSpec


__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = [
    "DEFAULT_DEVICE",
    "ENTRY_POINT_GROUP",
    "Board",
    "Device",
    "DeviceFacts",
    "DevicePool",
    "DeviceSpec",
    "DeviceUnavailable",
    "device_kinds",
    "make_device",
    "register_device",
    "unregister_device",
]
