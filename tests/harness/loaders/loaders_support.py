"""Helpers for tests/harness/loaders/test_loaders.py: an external loader, and the runner that loads in a fresh process.

The runner is a subprocess on purpose: it must put itself on the emulated Mali (``EmulatedBoard.activate``)
before its first OpenCL call, and one process per variant keeps tinygrad's caches and PoCL's memory of one
variant out of another's measurements.

    python -m tests.harness.loaders.loaders_support SPEC.json     (SPEC: {"loader", "board", "out", "jobs": [...]})
"""

from __future__ import annotations

import gc
import json
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from mali_hil.harness.loaders import Loader, LoadOptions

DEVICE = "CL"


def external_load(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Any]:
    """A user's loader: the safetensors library reads each selected tensor, ml_dtypes converts it on the host."""
    from safetensors import safe_open
    from tinygrad import Tensor

    from mali_hil.harness.checkpoints import numpy_dtype
    from mali_hil.harness.loaders import as_checkpoint, plan_load

    out = {}
    for plan in plan_load(as_checkpoint(checkpoint), options):
        with safe_open(plan.path, framework="numpy") as handle:
            array = handle.get_tensor(plan.name)
        with np.errstate(over="ignore", invalid="ignore"):
            array = array.astype(numpy_dtype(plan.final_dtype))
        out[plan.name] = Tensor(array.reshape(-1), device=device).reshape(plan.shape).realize()
    return out


EXTERNAL = Loader(name="external-object", load=external_load, description="the same function as a Loader record")


def _anon_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class _AnonPeak:
    """Peak anonymous RSS, sampled every 2 ms: on PoCL device buffers are anonymous host memory too, so this is
    the unified figure a Mali board's RAM pays (own sampler: mali_hil.runtime.meter's API is still moving)."""

    def __init__(self) -> None:
        self.peak = _anon_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _anon_bytes())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _anon_bytes())


def _read_back_matches(tensor: Any, expected: np.ndarray) -> bool:
    """mali_hil.harness.loaders._device.read_at, in two pieces, against tinygrad's own read-back."""
    from mali_hil.harness.loaders._device import read_at

    if tensor.numel() == 0 or tensor.uop.buffer.base is not tensor.uop.buffer:
        return True  # nothing to read, or not a whole buffer (external loaders may return views)
    raw = expected.reshape(-1).view(np.uint8)
    got = np.empty_like(raw)
    half = raw.size // 2
    read_at(tensor, 0, got[:half])
    read_at(tensor, half, got[half:])
    return bool((got == raw).all())


def _run_job(loader: Loader, job: dict[str, Any], out: Path, stats: Any) -> dict[str, Any]:
    from tinygrad import Device

    options = LoadOptions(**job["options"])
    gc.collect()
    Device[DEVICE].synchronize()
    Device[DEVICE].allocator.free_cache()
    baseline = _anon_bytes()
    if stats is not None:
        stats.reset_layer_stats()
    meter = _AnonPeak()
    started = time.monotonic()
    tensors = loader.load(job["checkpoint"], DEVICE, options)
    Device[DEVICE].synchronize()
    elapsed = time.monotonic() - started
    peak = meter.stop()
    layer = stats.read_layer_stats() if stats is not None else None
    result: dict[str, Any] = {
        "keys": list(tensors),
        "dtypes": {k: t.dtype.name for k, t in tensors.items()},
        "shapes": {k: list(t.shape) for k, t in tensors.items()},
        "realized": {k: bool(t.uop.is_realized) or t.numel() == 0 for k, t in tensors.items()},
        "elapsed_s": elapsed,
        "ram_peak_bytes": peak - baseline,
        "device_peak_bytes": None if layer is None else layer.peak_bytes,
        "device_live_bytes": None if layer is None else layer.live_bytes,
        "bounds": list(loader.bounds(job["checkpoint"], options)) if loader.device_bound else [None, None],
    }
    if job.get("save", True):
        arrays = {k: t.numpy() for k, t in tensors.items()}
        result["read_at_mismatches"] = [k for k, t in tensors.items() if not _read_back_matches(t, arrays[k])]
        np.savez(out / f"{job['id']}.npz", **arrays)
    return result


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"loader": spec["loader"], "jobs": {}}
    stats = None
    if spec.get("board"):
        from mali_hil.emulator.emulated_board import EmulatedBoard

        EmulatedBoard.from_spec(spec["board"]).activate()
        import mali_hil.runtime.layer_stats as stats
    from tinygrad import Device

    from mali_hil.harness.loaders import get_loader

    device = Device[DEVICE]
    report["device"] = device.device_name
    report["fp16_native"] = "cl_khr_fp16" in device.device_exts
    loader = get_loader(spec["loader"])
    for job in spec["jobs"]:
        try:
            report["jobs"][job["id"]] = _run_job(loader, job, out, stats)
        except Exception as exc:
            report["jobs"][job["id"]] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
    (out / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
