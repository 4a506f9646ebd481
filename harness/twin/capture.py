"""``mali-hil board capture DEVICE``: a profile file of a real board, made on the board through its own driver.

The board's side (:mod:`mali_hil.emulator.capture`) answers with the OpenCL identity, the memory facts and the
allocation probe; here they become a profile in the format every shipped profile has, each field's source
``captured from HOST on DATE (driver ...)``, and the file is read back through the profile parser before it is
kept, so what is written is what ``--device=emulated-mali:FILE`` will load.
"""

from __future__ import annotations

import datetime
import json
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mali_hil.emulator.board_memory import MEMORY_FIELDS
from mali_hil.emulator.profile import CL_ERRORS, SVM_CAPABILITIES, Profile, parse_profile_file
from mali_hil.errors import MaliHilError

CAPTURE_MODULE = "mali_hil.emulator.capture"
_NAMES = {code: name for name, code in CL_ERRORS.items()}
# (section, key) of the profile -> where the board's identity answer holds it
_PLATFORM = {"name": "name", "vendor": "vendor", "version": "version", "extensions": "extensions",
             "icd_suffix": "icd_suffix"}  # fmt: skip
_DEVICE = ("name", "vendor", "vendor_id", "version", "driver_version", "opencl_c_version", "extensions", "global_mem",
           "max_alloc", "max_work_group_size", "compute_units", "max_clock_mhz", "unified_memory", "local_mem",
           "max_constant_buffer", "max_constant_args", "image2d_max_size", "image3d_max_size",
           "image_max_buffer_size", "image_max_array_size")  # fmt: skip


class CaptureError(MaliHilError):
    """The board refused the capture (busy, no OpenCL device) or answered what no profile can hold."""


@dataclass(frozen=True)
class Captured:
    path: Path
    profile: Profile
    document: dict[str, Any]  # the board's answer
    seconds: float  # the whole capture, connection and install included

    @property
    def probe_peak(self) -> int:
        """The highest RAM the probe took on the board (its fills), in bytes."""
        return max((fill.get("peak", 0) for fill in self.document["probe"]["fills"]), default=0)


def capture(spec: str, out: Path | None, *, ram: int | None = None, min_available: float = 0.5,
            probe_budget: int | None = None, timeout: float = 600.0) -> Captured:  # fmt: skip
    """Capture the board behind ``spec`` (``ssh://...`` or ``labgrid:...``) into a profile file."""
    from mali_hil.harness.devices.registry import make_device
    from mali_hil.harness.transports.ssh import SshTransport
    from mali_hil.runtime.supervisor import ISOLATED

    started = time.monotonic()
    with make_device(spec) as device:
        transport = device.transport
        if not isinstance(transport, SshTransport):
            raise CaptureError(f"{spec}: board capture reaches a board over SSH (ssh://... or labgrid:PLACE)")
        remote = [*transport.python(), *ISOLATED, "-m", CAPTURE_MODULE, "--min-available", str(min_available),
                  "--timeout", str(timeout)]  # fmt: skip
        if transport.target.emulate:
            remote += ["--emulate", transport.target.emulate]
        if probe_budget is not None:
            remote += ["--probe-budget", str(probe_budget)]
        done = transport.run(remote, timeout=timeout + 60, check=False)
        host = transport.target.destination
    lines = [line for line in done.stdout.decode(errors="replace").splitlines() if line.startswith("{")]
    answer = json.loads(lines[-1]) if lines else {}
    if "refused" in answer:
        raise CaptureError(f"{host} refused the capture: {answer['refused']}")
    if done.returncode != 0 or "identity" not in answer:
        raise CaptureError(f"{host}: the capture failed (exit {done.returncode}): "
                           f"{done.stderr.decode(errors='replace').strip()[-1500:]}")  # fmt: skip
    text = profile_text(answer, host, ram)
    path = out or Path("profiles") / f"{_slug(host)}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text, encoding="utf-8")
    try:
        profile = parse_profile_file(staging)
    except MaliHilError as exc:
        raise CaptureError(f"the captured profile does not parse (a bug: please report it): {exc}") from None
    staging.replace(path)
    return Captured(path, replace(profile, key=path.stem, path=path), answer, time.monotonic() - started)


def profile_text(answer: dict[str, Any], host: str, ram: int | None) -> str:
    """The profile file of a capture: ``[section] key = { value, source }`` for every field."""
    ident, memory, probe = answer["identity"], answer["memory"], answer["probe"]
    device = ident["device"]
    day = datetime.datetime.now(datetime.UTC).date().isoformat()
    how = f"driver {device['driver_version']}" + (f"; emulated {answer['emulated']}" if answer.get("emulated") else "")
    source = f"captured from {host} on {day} ({how})"
    board_ram = ram or label_size(memory["mem_total"])
    ram_source = source if ram else f"{source}: MemTotal rounded up to the next board size (give --ram for the label)"
    sections: dict[str, dict[str, tuple[Any, str]]] = {
        "board": {"ram": (str(board_ram), ram_source)},
        "platform": {key: (ident["platform"][found], source) for key, found in _PLATFORM.items()},
        "device": {key: (device[key], source) for key in _DEVICE}
        | {"fp64": (bool(device["double_fp_config"]), source), "svm": (_svm(device["svm_capabilities"]), source)},
        "oom": _oom(probe, source),
        "compiler": {"build_log_file": (ident["build_log_file"] or "<source>",
                                        source if ident["build_log_file"] else "estimated: the board's build log "
                                        "named no source file")},
        "memory": {key: (memory[key], source) for key in MEMORY_FIELDS},
    }  # fmt: skip
    lines = [
        f"# {device['name']} captured by `mali-hil board capture` from {host} on {day}.",
        "# Every field is {value, source}; a job's RAM budget on the emulated twin is [memory] mem_available.",
    ]
    for section, entries in sections.items():
        lines += ["", f"[{section}]"]
        lines += [f"{key} = {{ value = {_toml(value)}, source = {_toml(why)} }}"
                  for key, (value, why) in entries.items()]  # fmt: skip
    return "\n".join(lines) + "\n"


def _oom(probe: dict[str, Any], source: str) -> dict[str, tuple[Any, str]]:
    """How the board failed under the probe -> ``[oom]``."""
    over = probe["over_max_alloc"]
    if over != 0 and over not in _NAMES:
        raise CaptureError(f"max allocation + 1 failed with OpenCL code {over}, which no profile can state yet")
    fill = probe["fills"][-1]  # the smallest buffers: the closest to where memory really ends
    said = f"{source}: {fill['buffers']} buffers of {fill['size']} bytes, then {fill['ending']}"
    entries: dict[str, tuple[Any, str]] = {"over_max_alloc": ("accept" if over == 0 else _NAMES[over], source)}
    if fill["ending"] == "oom-killed":
        return entries | {"failure": ("oom-kill", said), "trigger": ("ram", said),
                          "error": ("CL_OUT_OF_HOST_MEMORY", "estimated: the board's driver never refused (the OOM "
                                    "killer came first); the code a test asking for an error would get")}  # fmt: skip
    refused = re.fullmatch(r"refused (-?\d+)", fill["ending"])
    if refused is None or int(refused.group(1)) not in _NAMES:
        raise CaptureError(f"the allocation probe ended '{fill['ending']}' ({fill['buffers']} buffers of "
                           f"{fill['size']} bytes): neither a driver's refusal nor an OOM kill")  # fmt: skip
    failure = "enqueue-error" if fill.get("at") == "enqueue" else "alloc-error"
    return entries | {"failure": (failure, said), "trigger": ("both", said),
                      "error": (_NAMES[int(refused.group(1))], said)}  # fmt: skip


def label_size(mem_total: int) -> int:
    """The board size on the label: the smallest of 2^k and 3 x 2^k bytes (boards of 3, 6 and 12 GiB exist) that is
    at least MemTotal."""
    sizes = sorted({1 << k for k in range(20, 46)} | {3 << k for k in range(19, 45)})
    return next(size for size in sizes if size >= mem_total)


def _svm(caps: int) -> str:
    return next((name for name, bits in sorted(SVM_CAPABILITIES.items(), key=lambda kv: -kv[1]) if caps & bits == bits
                 and bits), "none")  # fmt: skip


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a TOML basic string (JSON's escapes are TOML's)


def _slug(host: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", host).strip("-.") or "board"
