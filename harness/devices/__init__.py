"""Devices that run load jobs: the emulated Mali, the host's own OpenCL device, and (later) boards over SSH."""

from harness.devices.base import DEFAULT_DEVICE, Device, device_kinds, make_device, register_device

__all__ = ["DEFAULT_DEVICE", "Device", "device_kinds", "make_device", "register_device"]
