"""``python -m mali_hil.emulator.info``: what OpenCL shows this process, as JSON, asked through real OpenCL calls
(pyopencl).

Run on a board (``mali-hil emulator info``), it shows the emulated Mali exactly as a client such as tinygrad
sees it, because the answers come back through the ICD loader and the layer, not from the profile file.
:func:`describe` does that, and asks the bare backend (the same query without the layer) whether PoCL itself
has ``cl_khr_fp16``, which decides whether half precision is native or emulated through float32.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from mali_hil.errors import BackendError
from mali_hil.sizes import format_size

if TYPE_CHECKING:
    from mali_hil.emulator.emulated_board import EmulatedBoard

# pyopencl device attribute -> key in our JSON
_DEVICE_FIELDS = {
    "name": "name",
    "vendor": "vendor",
    "vendor_id": "vendor_id",
    "version": "version",
    "driver_version": "driver_version",
    "opencl_c_version": "opencl_c_version",
    "extensions": "extensions",
    "global_mem_size": "global_mem",
    "max_mem_alloc_size": "max_alloc",
    "max_work_group_size": "max_work_group_size",
    "max_compute_units": "compute_units",
    "max_clock_frequency": "max_clock_mhz",
    "host_unified_memory": "unified_memory",
    "double_fp_config": "double_fp_config",
    "svm_capabilities": "svm_capabilities",
    "local_mem_size": "local_mem",
    "max_constant_buffer_size": "max_constant_buffer",
    "image2d_max_width": "image2d_max_size",
}
_QUERY_TIMEOUT = 120.0  # seconds; PoCL compiles nothing here, but a cold first start on a loaded CI box is slow


def query_opencl() -> dict[str, Any]:
    """Every platform and device this process's OpenCL shows, as plain data."""
    import pyopencl as cl  # heavy, and only the board process needs it

    platforms = []
    for platform in cl.get_platforms():
        devices = []
        for device in platform.get_devices():
            entry: dict[str, Any] = {}
            for attr, key in _DEVICE_FIELDS.items():
                try:
                    entry[key] = getattr(device, attr)
                except cl.Error:  # e.g. a query a 3.0 driver dropped: say so rather than fail the listing
                    entry[key] = None
            entry["extensions"] = (entry["extensions"] or "").split()
            if entry["unified_memory"] is not None:
                entry["unified_memory"] = bool(entry["unified_memory"])
            devices.append(entry)
        platforms.append(
            {
                "name": platform.name,
                "vendor": platform.vendor,
                "version": platform.version,
                "extensions": platform.extensions.split(),
                "devices": devices,
            }
        )
    return {"platforms": platforms}


def _query_command() -> list[str]:
    from mali_hil.runtime.supervisor import ISOLATED

    return [sys.executable, *ISOLATED, "-m", "mali_hil.emulator.info"]


def _backend_query() -> dict[str, Any]:
    from mali_hil.emulator.backend import backend_icd
    from mali_hil.emulator.emulated_board import CONFIG_ENV, LAYERS_ENV
    from mali_hil.runtime.layer_stats import STATS_FILE_ENV

    env = {k: v for k, v in os.environ.items() if k not in (LAYERS_ENV, CONFIG_ENV, STATS_FILE_ENV)}
    env.update(OCL_ICD_VENDORS=str(backend_icd()), OCL_ICD_FILENAMES="")  # the backend boards run on
    try:
        done = subprocess.run(_query_command(), env=env, capture_output=True, text=True, timeout=_QUERY_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise BackendError(f"querying the bare OpenCL backend took over {_QUERY_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        raise BackendError(f"querying the bare OpenCL backend failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def describe(board: EmulatedBoard) -> dict[str, Any]:
    """What a process on ``board`` sees through OpenCL, plus the backend's fp16 support per device."""
    from mali_hil.emulator.launcher import RunStatus, run_on_board

    run = run_on_board(board, _query_command(), capture_output=True, timeout=_QUERY_TIMEOUT)
    if run.status is not RunStatus.OK:
        raise BackendError(
            f"the OpenCL query on {board.profile.spec} ended {run.status.value} (exit {run.returncode}): "
            f"{(run.stderr or '')[-2000:]}"
        )
    seen = json.loads(run.stdout or "")
    backend = _backend_query()["platforms"]
    # the layer wraps the loader's platforms in place, so the same (platform, device) positions match
    for p, platform in enumerate(seen["platforms"]):
        for d, device in enumerate(platform["devices"]):
            try:
                bare = backend[p]["devices"][d]
                device["backend_fp16"] = "cl_khr_fp16" in bare["extensions"]
                device["backend_max_alloc"] = bare["max_alloc"]
            except (IndexError, KeyError):
                device["backend_fp16"] = device["backend_max_alloc"] = None
    return {"board": board.profile.spec, "ram_budget": board.ram_budget, "board_ram": board.profile.board_ram, **seen}


def fp16_line(device: dict[str, Any]) -> str:
    """Whether a client gets half precision natively, and why not when it does not."""
    if "cl_khr_fp16" in device["extensions"]:
        return "fp16: native (backend has cl_khr_fp16)"
    if device.get("backend_fp16"):
        return "fp16: emulated (profile lacks cl_khr_fp16)"
    return "fp16: emulated (backend lacks cl_khr_fp16)"


def render(info: dict[str, Any]) -> str:
    """clinfo-like text."""
    nominal = f" of {format_size(info['board_ram'])} nominal" if info.get("board_ram") else ""
    lines = [f"Board                 {info['board']} (RAM budget {format_size(info['ram_budget'])}{nominal})"]
    for platform in info["platforms"]:
        lines += [
            f"Platform              {platform['name']}",
            f"  Vendor              {platform['vendor']}",
            f"  Version             {platform['version']}",
            f"  Extensions          {' '.join(platform.get('extensions', []))}",
        ]
        for dev in platform["devices"]:
            unified = {True: "Yes", False: "No", None: "unknown"}[dev["unified_memory"]]
            lines += [
                f"  Device              {dev['name']}",
                f"    Vendor            {dev['vendor']} (vendor id {_hex(dev['vendor_id'])})",
                f"    Version           {dev['version']}",
                f"    Driver version    {dev['driver_version']}",
                f"    OpenCL C version  {dev['opencl_c_version']}",
                f"    Global memory     {_size(dev['global_mem'])}",
                f"    Max allocation    {_size(dev['max_alloc'])}",
                f"    Max work-group    {dev['max_work_group_size']}",
                f"    Compute units     {dev['compute_units']}",
                f"    Max clock         {dev['max_clock_mhz']} MHz",
                f"    Unified memory    {unified}",
                f"    fp64              {'yes' if dev.get('double_fp_config') else 'no'}",
                f"    SVM               {_svm(dev.get('svm_capabilities'))}",
                f"    Local memory      {_size(dev.get('local_mem'))}",
                f"    Constant buffer   {_size(dev.get('max_constant_buffer'))}",
                f"    Max 2D image      {dev.get('image2d_max_size')} pixels a side",
                f"    Extensions        {' '.join(dev['extensions'])}",
                f"    {fp16_line(dev)}",
            ]
            backend_max = dev.get("backend_max_alloc")
            if backend_max and dev["max_alloc"] and backend_max < dev["max_alloc"]:
                lines.append(
                    f"    emulator limit: the backend refuses single buffers above {_size(backend_max)}; larger ones"
                    " the profile allows fail as backend_refusals, not as the profile's behaviour"
                )
    return "\n".join(lines)


def _svm(caps: int | None) -> str:
    if caps is None:
        return "unknown"
    grains = [name for bit, name in ((1, "coarse-grained buffer"), (2, "fine-grained buffer")) if caps & bit]
    return ", ".join(grains) or "none"


def _hex(value: int | None) -> str:
    return "unknown" if value is None else f"0x{value:x}"


def _size(value: int | None) -> str:
    return "unknown" if value is None else f"{value} ({format_size(value)})"


def main() -> int:
    print(json.dumps(query_opencl()))  # JSON only: this runs inside the board process for describe()
    return 0


if __name__ == "__main__":
    sys.exit(main())
