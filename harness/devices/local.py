"""``local``: the host's own first OpenCL device, as it is (no layer, no RAM budget but the machine's own).

Useful on a real board running the suite itself, or to compare the emulator with the backend underneath.
A worker SIGKILLed here is taken as the kernel's OOM killer, the only thing that sends it unasked.
"""

from __future__ import annotations

from harness.devices.base import Device, register_device
from harness.devices.worker_device import WorkerDevice


@register_device("local")
def _make(spec: str) -> Device:
    return WorkerDevice(spec)
