"""Mali device profiles: data files under ``emulator/profiles/``, parsed and checked once, here.

A profile is a TOML file whose every field is ``{value, source}``. Nothing else in mali-hil branches on a
GPU's name or its driver: a new GPU, or the same GPU under another driver (libmali, rusticl), is one new file.
``NAME[:RAM]`` (``mali-g610:3GiB``) resizes the board; the device's global memory and max allocation keep the
share of the board that the real dump showed, unless the profile states its driver's rule as data
(``[device] global_mem_share``: the share of RAM by board size, and ``max_alloc_limit``), as rusticl's is.
"""

from __future__ import annotations

import enum
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mali_hil.emulator.board_memory import MEMORY_FIELDS, BoardMemory
from mali_hil.errors import ProfileError
from mali_hil.sizes import parse_size

PROFILE_DIR = Path(__file__).parent / "profiles"

# OpenCL error codes a profile may name; the layer gets the number.
CL_ERRORS = {
    "CL_OUT_OF_RESOURCES": -5,
    "CL_OUT_OF_HOST_MEMORY": -6,
    "CL_MEM_OBJECT_ALLOCATION_FAILURE": -4,
    "CL_INVALID_BUFFER_SIZE": -61,
}

# Profile fields the layer takes as they are, under the same name in its config (limits it answers and enforces).
AS_IS_FIELDS = (
    "local_mem", "max_constant_buffer", "max_constant_args", "image2d_max_size", "image3d_max_size",
    "image_max_buffer_size", "image_max_array_size", "build_log_file",
)

# The SVM a driver offers (CL_DEVICE_SVM_CAPABILITIES bits: coarse-grained buffer 1, fine-grained buffer 2).
SVM_CAPABILITIES = {"none": 0, "coarse-grain": 1, "fine-grain": 1 | 2}


class OomFailure(enum.Enum):
    """How the real driver fails when device memory runs out."""

    ALLOC_ERROR = "alloc-error"  # clCreateBuffer returns an error code
    ENQUEUE_ERROR = "enqueue-error"  # creation succeeds, the next enqueue fails
    OOM_KILL = "oom-kill"  # nothing fails: the kernel's OOM killer ends the process


class OomTrigger(enum.Enum):
    """What runs out first for the real driver. On unified memory the board's RAM always can (device buffers are
    RAM from their allocation): the question is whether the driver's own device-memory counter fails too."""

    RAM = "ram"  # only the RAM: global memory is a reported figure, allocations past it go on (libmali)
    BOTH = "both"  # the driver also fails, by ``failure``, once live device bytes pass global memory


@dataclass(frozen=True)
class Profile:
    """One Mali GPU as its driver describes itself, on a board with ``board_ram`` bytes of RAM."""

    key: str  # file stem, e.g. "mali-g610"
    platform_name: str
    platform_vendor: str
    platform_version: str
    platform_extensions: tuple[str, ...]
    platform_icd_suffix: str  # what clinfo shows as the ICD "function suffix" (PoCL's is POCL)
    name: str
    vendor: str
    vendor_id: int
    version: str
    driver_version: str
    opencl_c_version: str
    extensions: tuple[str, ...]
    global_mem: int
    max_alloc: int
    max_work_group_size: int
    compute_units: int
    max_clock_mhz: int
    unified_memory: bool
    fp64: bool  # whether the driver has double precision (cl_khr_fp64)
    svm: str  # a key of SVM_CAPABILITIES
    local_mem: int  # bytes of __local memory per work-group
    max_constant_buffer: int  # bytes
    max_constant_args: int
    image2d_max_size: int  # pixels, width and height alike
    image3d_max_size: int  # pixels, each dimension
    image_max_buffer_size: int  # pixels of a 1D image on a buffer
    image_max_array_size: int  # layers
    build_log_file: str  # what the driver's compiler calls the program's source in its diagnostics
    board_ram: int
    oom_failure: OomFailure
    oom_error: str  # symbolic OpenCL error for alloc-error / enqueue-error
    over_max_alloc: str  # "accept" or a symbolic OpenCL error
    oom_trigger: OomTrigger
    # the driver's rule for global memory, when it has one: ((board RAM up to, share), ...), the last without a
    # bound (None); and the largest single allocation it ever allows
    global_mem_share: tuple[tuple[int | None, float], ...] | None = None
    max_alloc_limit: int | None = None
    # what the board leaves a job ([memory]); None: the whole nominal RAM (a profile from clinfo dumps alone)
    memory: BoardMemory | None = None
    sources: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    path: Path | None = field(default=None, compare=False)

    @property
    def spec(self) -> str:
        """The name that recreates this profile, RAM included."""
        return f"{self.key}:{_compact_size(self.board_ram)}"

    def job_budget(self) -> int:
        """The RAM a job gets on this board: MemAvailable at idle where the profile has ``[memory]``, else the
        nominal size; a board whose memory is not modelled (swap, strict overcommit) is refused with the reason."""
        if self.memory is None:
            return self.board_ram
        why = self.memory.refusal()
        if why is not None:
            raise ProfileError(f"profile {self.key} cannot be emulated: {why}")
        return self.memory.mem_available

    def with_ram(self, ram: int) -> Profile:
        """The same GPU on a board with ``ram`` bytes: global memory and max alloc keep their share of the board,
        the board's memory facts their rule (:meth:`BoardMemory.resized`)."""
        if ram <= 0:
            raise ProfileError(f"board RAM must be positive, got {ram} bytes")
        memory = None if self.memory is None else self.memory.resized(self.board_ram, ram)
        if self.global_mem_share is not None:
            global_mem = global_mem_by_rule(self.global_mem_share, ram)
            max_alloc = min(global_mem, self.max_alloc_limit or global_mem)
            return replace(self, board_ram=ram, global_mem=global_mem, max_alloc=max_alloc, memory=memory)
        share = self.global_mem / self.board_ram
        alloc_share = self.max_alloc / self.global_mem
        global_mem = int(ram * share)
        return replace(self, board_ram=ram, global_mem=global_mem, max_alloc=int(global_mem * alloc_share),
                       memory=memory)  # fmt: skip

    def is_estimated(self, name: str) -> bool:
        return self.sources.get(name, "").startswith("estimated")


def global_mem_by_rule(rule: tuple[tuple[int | None, float], ...], ram: int) -> int:
    """The global memory a driver reports on a board with ``ram`` bytes, by its share rule."""
    share = next(share for up_to, share in rule if up_to is None or ram <= up_to)
    return int(ram * share)


def _compact_size(n: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


# (section, key) -> Profile field, expected type
_FIELDS: dict[str, tuple[str, str, type]] = {
    "board_ram": ("board", "ram", str),
    "platform_name": ("platform", "name", str),
    "platform_vendor": ("platform", "vendor", str),
    "platform_version": ("platform", "version", str),
    "platform_extensions": ("platform", "extensions", list),
    "platform_icd_suffix": ("platform", "icd_suffix", str),
    "name": ("device", "name", str),
    "vendor": ("device", "vendor", str),
    "vendor_id": ("device", "vendor_id", int),
    "version": ("device", "version", str),
    "driver_version": ("device", "driver_version", str),
    "opencl_c_version": ("device", "opencl_c_version", str),
    "extensions": ("device", "extensions", list),
    "global_mem": ("device", "global_mem", int),
    "max_alloc": ("device", "max_alloc", int),
    "max_work_group_size": ("device", "max_work_group_size", int),
    "compute_units": ("device", "compute_units", int),
    "max_clock_mhz": ("device", "max_clock_mhz", int),
    "unified_memory": ("device", "unified_memory", bool),
    "fp64": ("device", "fp64", bool),
    "svm": ("device", "svm", str),
    "local_mem": ("device", "local_mem", int),
    "max_constant_buffer": ("device", "max_constant_buffer", int),
    "max_constant_args": ("device", "max_constant_args", int),
    "image2d_max_size": ("device", "image2d_max_size", int),
    "image3d_max_size": ("device", "image3d_max_size", int),
    "image_max_buffer_size": ("device", "image_max_buffer_size", int),
    "image_max_array_size": ("device", "image_max_array_size", int),
    "build_log_file": ("compiler", "build_log_file", str),
    "oom_failure": ("oom", "failure", str),
    "oom_error": ("oom", "error", str),
    "over_max_alloc": ("oom", "over_max_alloc", str),
    "oom_trigger": ("oom", "trigger", str),
}
# optional: a driver's global memory rule, as data (see Profile.global_mem_share), and what the board leaves a job
# ([memory], all of it or none: see emulator/board_memory.py)
_OPTIONAL = {
    "global_mem_share": ("device", "global_mem_share", list),
    "max_alloc_limit": ("device", "max_alloc_limit", int),
    **{name: ("memory", name, kind) for name, kind in MEMORY_FIELDS.items()},
}


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def parse_profile_file(path: Path) -> Profile:
    """Read and check one profile file; every problem is a ProfileError naming the file and the field."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"profile file {path} is not readable TOML: {exc}") from None
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for attr, (section, key, kind) in {**_FIELDS, **_OPTIONAL}.items():
        entry = data.get(section, {}).get(key)
        if entry is None and attr in _OPTIONAL:
            continue
        where = f"[{section}] {key}"
        if not isinstance(entry, dict) or "value" not in entry or "source" not in entry:
            raise ProfileError(f'profile file {path}: {where} must be {{ value = ..., source = "..." }}')
        value, source = entry["value"], entry["source"]
        if not isinstance(source, str) or not source.strip():
            raise ProfileError(f"profile file {path}: {where} needs a source (or 'estimated: <reason>')")
        # bool is an int in Python; don't let `true` pass as a number or 1 as a flag
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ProfileError(f"profile file {path}: {where} must be a {kind.__name__}, got {value!r}")
        # the layer reads its config as key=value lines: a control character would end a value and start a line
        texts = value if isinstance(value, list) else [value]
        if any(isinstance(text, str) and any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text) for text in texts):
            raise ProfileError(f"profile file {path}: {where} holds a control character (a line break?): {value!r}")
        values[attr], sources[attr] = value, source
    for attr in ("extensions", "platform_extensions"):
        values[attr] = tuple(values[attr])
        if any(not isinstance(e, str) or "bf16" in e.lower() or "bfloat16" in e.lower() for e in values[attr]):
            raise ProfileError(f"profile file {path}: {attr} must be strings, never a bf16 one (no Mali has bf16)")
        if "cl_khr_fp64" in values[attr] and not values["fp64"]:
            raise ProfileError(f"profile file {path}: {attr} lists cl_khr_fp64, but [device] fp64 is false")
    if values["svm"] not in SVM_CAPABILITIES:
        raise ProfileError(f"profile file {path}: [device] svm must be one of {', '.join(SVM_CAPABILITIES)}")
    try:
        values["oom_failure"] = OomFailure(values["oom_failure"])
    except ValueError:
        choices = ", ".join(f.value for f in OomFailure)
        bad = values["oom_failure"]
        raise ProfileError(f"profile file {path}: [oom] failure {bad!r} is not one of {choices}") from None
    try:
        values["oom_trigger"] = OomTrigger(values["oom_trigger"])
    except ValueError:
        choices, bad = ", ".join(t.value for t in OomTrigger), values["oom_trigger"]
        raise ProfileError(f"profile file {path}: [oom] trigger {bad!r} is not one of {choices}") from None
    if values["oom_trigger"] is OomTrigger.RAM and values["oom_failure"] is not OomFailure.OOM_KILL:
        raise ProfileError(f"profile file {path}: [oom] trigger 'ram' is the OOM killer: failure must be oom-kill")
    for attr in ("oom_error", "over_max_alloc"):
        allowed = set(CL_ERRORS) | ({"accept"} if attr == "over_max_alloc" else set())
        if values[attr] not in allowed:
            raise ProfileError(f"profile file {path}: {_FIELDS[attr][0]} {attr} must be one of {sorted(allowed)}")
    values["board_ram"] = parse_size(values["board_ram"])
    if not 0 < values["max_alloc"] <= values["global_mem"] <= values["board_ram"]:
        raise ProfileError(f"profile file {path}: need 0 < max_alloc <= global_mem <= board ram")
    if "global_mem_share" in values:
        values["global_mem_share"] = _share_rule(path, values["global_mem_share"])
        expected = global_mem_by_rule(values["global_mem_share"], values["board_ram"])
        limit = values.get("max_alloc_limit") or expected
        if (values["global_mem"], values["max_alloc"]) != (expected, min(expected, limit)):
            raise ProfileError(
                f"profile file {path}: global_mem and max_alloc must be what the share rule gives on the default "
                f"board ({expected} and {min(expected, limit)} bytes)"
            )
    present = [name for name in MEMORY_FIELDS if name in values]
    if present:
        missing = [name for name in MEMORY_FIELDS if name not in values]
        if missing:
            raise ProfileError(f"profile file {path}: [memory] lacks {', '.join(missing)} (all of it, or none)")
        values["memory"] = BoardMemory(**{name: values.pop(name) for name in MEMORY_FIELDS})
        values["memory"].check(f"profile file {path}", values["board_ram"])
    return Profile(key=path.stem, sources=sources, path=path, **values)


def _share_rule(path: Path, rows: list[Any]) -> tuple[tuple[int | None, float], ...]:
    """``[{up_to = "4GiB", share = 0.5}, {share = 0.75}]``: ascending bounds, the last row without one."""
    rule: list[tuple[int | None, float]] = []
    for i, row in enumerate(rows):
        share = row.get("share") if isinstance(row, dict) else None
        last = i == len(rows) - 1
        if not isinstance(share, int | float) or isinstance(share, bool) or not 0 < share <= 1:
            raise ProfileError(f"profile file {path}: global_mem_share row {i + 1} needs a share in (0, 1]")
        if ("up_to" in row) == last:
            raise ProfileError(f"profile file {path}: global_mem_share rows need up_to, except the last")
        rule.append((None if last else parse_size(row["up_to"]), float(share)))
    bounds = [bound for bound, _ in rule[:-1]]
    if not rule or bounds != sorted(bounds):
        raise ProfileError(f"profile file {path}: global_mem_share needs rows in ascending up_to order")
    return tuple(rule)


def load_profile(spec: str) -> Profile:
    """``NAME``, ``NAME:RAM`` or a path to a profile file (optionally ``PATH:RAM``)."""
    name, sep, ram = spec.rpartition(":")
    if not sep:
        name, ram = spec, ""
    path = Path(name) if name.endswith(".toml") else PROFILE_DIR / f"{name}.toml"
    if not path.is_file():
        raise ProfileError(
            f"unknown profile {name!r}: available profiles are {', '.join(available_profiles())} "
            "(or give a path to a .toml profile file)"
        )
    profile = parse_profile_file(path)
    return profile.with_ram(parse_size(ram)) if ram else profile
