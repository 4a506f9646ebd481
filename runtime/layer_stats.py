"""The layer's memory counters, read in-process (ctypes on the loaded layer) or from the files it writes.

Two files: the JSON one at exit (or just before the layer's own OOM kill), and a binary snapshot
(``<stats file>.live``) the layer keeps current after every allocation and free, which a process killed from
outside (RAM watchdog, kernel OOM killer, timeout) leaves behind with its last counters.

In-process reading works because ``ctypes.CDLL`` on the path the ICD loader dlopen'ed (found in
``/proc/self/maps``) returns the same loaded object, hence the same counters. A process where no loader loaded
the layer has no counters to read; ``read_layer_stats`` says so instead of loading a fresh, empty copy.

Counts are exact at quiet points (no clCreate* running in another thread). Reading them first waits (at most
1 s) for buffers that PoCL frees just after clFinish returns, so numbers read after clFinish are final.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from mali_hil.errors import BackendError

STATS_FILE_ENV = "MALI_HIL_STATS_FILE"  # where the layer writes its counters (exit file, and its live snapshot)
STATS_VERSION = 2


@dataclass(frozen=True)
class LayerStats:
    """Counters of one process's emulated device memory (bytes are of live memory objects, not host RSS)."""

    generation: int  # how many times reset_layer_stats() ran
    live_bytes: int  # bytes of live objects within the cap, or all of them where only RAM limits (trigger ram)
    peak_bytes: int  # highest live_bytes since start or the last reset
    live_objects: int  # live memory objects with storage of their own, overcommitted ones included
    allocations: int  # such objects created (since reset)
    frees: int  # such objects really destroyed (since reset)
    failed_allocations: int  # requests refused by the cap or max_alloc (since reset)
    backend_refusals: int  # requests the profile allows but PoCL refused (an emulator limit; since reset)
    overcommitted_bytes: int  # bytes created past the cap: enqueue-error objects, or trigger ram's excess (since reset)
    cap_bytes: int  # the profile's global memory
    fp16_advertised: int  # 1 if the device lists cl_khr_fp16
    last_refused_bytes: int  # size of the last request refused by the cap or max_alloc, or overcommitted (0: none)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, data: dict[str, object], where: str) -> LayerStats:
        names = [f.name for f in fields(cls)]
        bad = [n for n in names if not isinstance(data.get(n), int) or isinstance(data.get(n), bool)]
        if bad:
            raise BackendError(f"layer stats from {where} lack integer counters {', '.join(bad)}")
        return cls(**{n: data[n] for n in names})  # type: ignore[arg-type]


class _CStats(ctypes.Structure):
    # mirrors struct mali_hil_stats in emulator/layer/stats.c: two header words, then the counters in LayerStats
    # order
    _fields_ = [("version", ctypes.c_uint64), ("active", ctypes.c_uint64)] + [
        (f.name, ctypes.c_uint64) for f in fields(LayerStats)
    ]


def _loaded_layer_path() -> str | None:
    """The mali-hil layer an ICD loader mapped into this process (``mali_layer-<hash>.so``), if any."""
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
        for line in maps:
            path = line.rstrip("\n").split(maxsplit=5)[-1].removesuffix(" (deleted)")  # a file rebuilt since
            name = path.rsplit("/", 1)[-1]
            if name.startswith("mali_layer") and name.endswith(".so"):
                return path
    return None


def _active_layer() -> ctypes.CDLL:
    path = _loaded_layer_path()
    if path is None:
        raise BackendError(
            "the mali-hil layer is not loaded in this process, so there are no counters to read: put the process "
            "on a board first (EmulatedBoard.activate() before any OpenCL call, or `mali-hil emulator run`) and "
            "make an OpenCL call"
        )
    try:  # the object the ICD loader mapped, never a second copy from the file now at that path
        lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD)
    except OSError as exc:
        raise BackendError(f"the mali-hil layer mapped from {path} cannot be reached: {exc}") from None
    lib.mali_hil_layer_stats.argtypes = [ctypes.POINTER(_CStats), ctypes.c_size_t]
    lib.mali_hil_layer_stats.restype = ctypes.c_int
    lib.mali_hil_layer_reset.argtypes = []
    lib.mali_hil_layer_reset.restype = None
    return lib


def read_layer_stats() -> LayerStats:
    """The counters of the layer in this process (which an ICD loader must have loaded)."""
    raw = _CStats()
    size = _active_layer().mali_hil_layer_stats(ctypes.byref(raw), ctypes.sizeof(raw))
    if size < ctypes.sizeof(raw) or raw.version != STATS_VERSION:
        raise BackendError(f"the mali-hil layer speaks stats version {raw.version}, this reader {STATS_VERSION}")
    if not raw.active:
        raise BackendError("the mali-hil layer is loaded but inactive (its config was refused; see stderr)")
    return LayerStats(**{f.name: getattr(raw, f.name) for f in fields(LayerStats)})


def reset_layer_stats() -> None:
    """Start a new measurement: peak restarts from what is live now, event counters from zero."""
    _active_layer().mali_hil_layer_reset()


def read_stats_file(path: Path | str) -> LayerStats:
    """The counters a layer wrote at process exit (or just before its OOM kill) to ``MALI_HIL_STATS_FILE``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackendError(
            f"no layer stats file at {path}: the process never initialised OpenCL on the board, or died "
            "before exit by a signal other than the layer's own OOM kill"
        ) from None
    except (OSError, ValueError) as exc:
        raise BackendError(f"layer stats file {path} is unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise BackendError(f"layer stats file {path} does not hold a JSON object")
    return LayerStats.from_mapping(data, str(path))


LIVE_SUFFIX = ".live"
_LIVE_MAGIC = 0x6D616C692D6C6976  # struct live_snapshot in emulator/layer/stats.c: magic, index, then two stats slots


def read_live_stats_file(path: Path | str) -> LayerStats:
    """The last counters the layer published to ``<stats file>.live`` before its process ended, however it ended."""
    live = Path(f"{path}{LIVE_SUFFIX}")
    slot_size = ctypes.sizeof(_CStats)
    try:
        raw = live.read_bytes()
    except FileNotFoundError:
        raise BackendError(f"no live layer stats at {live}: the process never opened OpenCL on the board") from None
    except OSError as exc:
        raise BackendError(f"live layer stats file {live} is unreadable: {exc}") from None
    if len(raw) < 16 + 2 * slot_size:
        raise BackendError(f"live layer stats file {live} is truncated ({len(raw)} bytes)")
    magic, index = struct.unpack_from("<QQ", raw)
    if magic != _LIVE_MAGIC or index > 1:
        raise BackendError(f"live layer stats file {live} is not a mali-hil layer snapshot")
    slot = _CStats.from_buffer_copy(raw, 16 + index * slot_size)
    if slot.version != STATS_VERSION or not slot.active:
        raise BackendError(f"live layer stats file {live}: stats version {slot.version}, this reader {STATS_VERSION}")
    return LayerStats(**{f.name: getattr(slot, f.name) for f in fields(LayerStats)})


def read_last_stats(path: Path | str) -> tuple[LayerStats, bool] | None:
    """The counters a process left: those of its exit file (True: written at exit or by the layer's own kill), else
    its live snapshot (False: it was ended from outside); None if it left neither."""
    for reader, final in ((read_stats_file, True), (read_live_stats_file, False)):
        try:
            return reader(path), final
        except BackendError:
            continue
    return None
