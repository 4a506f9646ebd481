"""Loaders that misbehave on purpose, to test that the harness classifies and survives each (used by path)."""

from __future__ import annotations

import os
import time
from typing import Any

from mali_hil.harness.loaders import LoadOptions


def hangs(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Any]:
    """Never returns: the job's timeout must end it."""
    while True:
        time.sleep(1)


def crashes(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Any]:
    """Dies the way PoCL does when an allocation fails under RLIMIT_DATA (an assertion: SIGABRT), mid-job, after
    saying why, as PoCL's assertion does."""
    os.write(2, b"pocl: Assertion `data != NULL' failed (a stand-in)\n")
    os.abort()


def raises(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Any]:
    raise ValueError("this loader refuses on purpose")


def hoards_host_memory(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Any]:
    """Touches host memory until the board's RAM budget must stop it (4 GiB: more than any test board)."""
    import numpy as np

    hoard = []
    for _ in range(64):
        hoard.append(np.ones(64 << 20, dtype=np.uint8))
    return {}


def spikes_host_memory(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Any]:
    """Loads as chunked does, after holding 320 MiB of host memory for a moment (past a 256 MiB board's RAM)."""
    import numpy as np

    from mali_hil.harness.loaders import get_loader

    spike = np.ones(320 << 20, dtype=np.uint8)
    time.sleep(0.05)  # long enough for the worker's 2 ms meter, short against a blinded watchdog
    del spike
    return get_loader("chunked").load(checkpoint, device, options)


def hoards_device_memory(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Any]:
    """Allocates 32 MiB device buffers until the device refuses one."""
    from tinygrad import dtypes

    from mali_hil.harness.loaders._device import allocate

    hoard = []
    for _ in range(256):
        hoard.append(allocate((32 << 20,), dtypes.uint8, device))
    return {}


def slow(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Any]:
    """The chunked loader after a pause of SLOW_SECONDS: a job long enough to be interrupted mid-way."""
    from mali_hil.harness.loaders import get_loader

    time.sleep(SLOW_SECONDS)
    return get_loader("chunked").load(checkpoint, device, options)


SLOW_SECONDS = 4.0


def _first_tensors(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Any]:
    from mali_hil.harness.loaders import get_loader

    return get_loader("chunked").load(checkpoint, device, options)


def returns_cpu_tensors(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Any]:
    """A correct load, then every tensor moved to the host's CPU device: not the device under test's memory."""
    return {name: tensor.to("CPU").realize() for name, tensor in _first_tensors(checkpoint, device, options).items()}


def returns_a_list(checkpoint: Any, device: str, options: LoadOptions) -> Any:
    return list(_first_tensors(checkpoint, device, options).values())


def returns_none(checkpoint: Any, device: str, options: LoadOptions) -> Any:
    _first_tensors(checkpoint, device, options)  # loaded, then dropped on the floor
    return None


def returns_numpy(checkpoint: Any, device: str, options: LoadOptions) -> Any:
    return {name: tensor.numpy() for name, tensor in _first_tensors(checkpoint, device, options).items()}


def returns_float32(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Any]:
    """Float tensors widened to float32 where the job asked for float16."""
    from tinygrad import dtypes

    loaded = _first_tensors(checkpoint, device, options)
    return {name: t.cast(dtypes.float32).realize() if t.dtype == dtypes.half else t for name, t in loaded.items()}


def returns_lazy(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Any]:
    """Returns a 24 MiB fp16 tensor that is not realized: its memory would come after the job's figures."""
    from tinygrad import Tensor, dtypes

    return {"lazy.weight": Tensor.full((12 << 20,), 1.5, dtype=dtypes.float16, device=device).contiguous()}
