"""An emulated Mali board: a profile plus a RAM budget, and the environment that puts a process on it.

The OpenCL layer reads its identity and cap from a small ``key=value`` file named by ``MALI_HIL_LAYER_CONFIG``
(C parses that in a dozen lines; TOML would need a library). ``OPENCL_LAYERS`` makes the ICD loader put the
layer in front of PoCL; both must be set before the process makes its first OpenCL call.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mali_hil.emulator.profile import AS_IS_FIELDS, CL_ERRORS, SVM_CAPABILITIES, Profile, load_profile
from mali_hil.errors import BackendError, BudgetError
from mali_hil.paths import cache_dir, private_dir
from mali_hil.runtime.layer_stats import STATS_FILE_ENV
from mali_hil.runtime.memory import host_ram_bytes
from mali_hil.sizes import format_size

CONFIG_ENV = "MALI_HIL_LAYER_CONFIG"
LAYERS_ENV = "OPENCL_LAYERS"


def layer_config_text(profile: Profile) -> str:
    over = 0 if profile.over_max_alloc == "accept" else CL_ERRORS[profile.over_max_alloc]
    fields = {
        "platform_name": profile.platform_name,
        "platform_vendor": profile.platform_vendor,
        "platform_version": profile.platform_version,
        "platform_extensions": " ".join(profile.platform_extensions),
        "platform_icd_suffix": profile.platform_icd_suffix,
        "device_name": profile.name,
        "device_vendor": profile.vendor,
        "vendor_id": profile.vendor_id,
        "device_version": profile.version,
        "driver_version": profile.driver_version,
        "opencl_c_version": profile.opencl_c_version,
        "extensions": " ".join(profile.extensions),
        "global_mem": profile.global_mem,
        "max_alloc": profile.max_alloc,
        "max_work_group_size": profile.max_work_group_size,
        "compute_units": profile.compute_units,
        "max_clock_mhz": profile.max_clock_mhz,
        "unified_memory": int(profile.unified_memory),
        "oom_failure": profile.oom_failure.value,
        "oom_error": CL_ERRORS[profile.oom_error],
        "over_max_alloc": over,
        "oom_trigger": profile.oom_trigger.value,
        "fp64": int(profile.fp64),
        "svm_capabilities": SVM_CAPABILITIES[profile.svm],
        **{key: getattr(profile, key) for key in AS_IS_FIELDS},
    }
    return "".join(f"{k}={v}\n" for k, v in fields.items())


def write_layer_config(profile: Profile) -> Path:
    """Write (once per distinct content) the layer's config file and return its path."""
    text = layer_config_text(profile)
    path = cache_dir() / f"layer-{profile.key}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.conf"
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)  # atomic, so a parallel worker never reads half a file
    return path


@dataclass(frozen=True)
class EmulatedBoard:
    """A Mali board to run processes on: the device's identity and cap, and the RAM the job may use."""

    profile: Profile
    ram_budget: int  # bytes of RAM (host memory + device buffers: they are one on Mali) the job process may use

    @classmethod
    def from_spec(cls, spec: str, ram_budget: int | None = None) -> EmulatedBoard:
        """``mali-g610:3GiB``: the profile on a 3 GiB board; the job's budget defaults to what that board leaves a
        job (its profile's ``[memory]``: MemAvailable at idle, not the nominal 3 GiB)."""
        profile = load_profile(spec)
        budget = profile.job_budget() if ram_budget is None else ram_budget
        host = host_ram_bytes()
        if budget > host:
            raise BudgetError(
                f"RAM budget {format_size(budget)} for {profile.spec} is larger than this machine's "
                f"{format_size(host)}: the watchdog could never fire. Pick a smaller board, e.g. "
                f"'{profile.key}:{max(1, host // (2 << 30))}GiB'"
            )
        if budget <= 0:
            raise BudgetError(f"RAM budget must be positive, got {budget} bytes")
        return cls(profile, budget)

    def environ(self, stats_file: Path | None = None) -> dict[str, str]:
        """The variables that put a new process on this board (add them to its environment)."""
        from mali_hil.emulator.backend import backend_icd
        from mali_hil.emulator.build import layer_path  # builds the layer on first use

        icd = backend_icd()
        # the ICD loader sees PoCL only (OCL_ICD_FILENAMES would be loaded before the vendors: emptied)
        env = {LAYERS_ENV: str(layer_path()), CONFIG_ENV: str(write_layer_config(self.profile)),
               "OCL_ICD_VENDORS": str(icd), "OCL_ICD_FILENAMES": ""}  # fmt: skip
        if stats_file is not None:
            env[STATS_FILE_ENV] = str(stats_file)
        env.update(kernel_caches(icd))
        if "PYOPENCL_NO_CACHE" not in os.environ:
            # pyopencl's binary cache has the same key problem and no variable to move it; PoCL under it keeps a
            # kernel cache of its own, keyed on its build, so little is lost. (pyopencl 2026.1 also turns the
            # CL_INVALID_BINARY into a KeyError on PYOPENCL_CACHE_FAILURE_FATAL instead of rebuilding.)
            env["PYOPENCL_NO_CACHE"] = "1"
        return env

    def activate(self, stats_file: Path | None = None) -> None:
        """Put the *current* process on this board. Must run before its first OpenCL call."""
        if _opencl_loaded():
            raise BackendError(
                "OpenCL is already initialised in this process, so the Mali layer can no longer be inserted: "
                "call EmulatedBoard.activate() before importing code that touches OpenCL, or use "
                "`mali-hil emulator run PROFILE -- CMD` to start a fresh process"
            )
        os.environ.update(self.environ(stats_file))


def kernel_caches(icd: Path) -> dict[str, str]:
    """Where PoCL and tinygrad keep the kernels they compiled, which jobs load and run: private folders, checked
    as the layer's is (:func:`mali_hil.paths.private_dir`). Left to itself PoCL would use
    ``$XDG_CACHE_HOME/pocl`` whoever owns it, and run kernels planted there. A folder the user names in
    ``POCL_CACHE_DIR`` or ``CACHEDB`` (its folder) is kept, if it passes the same check."""
    if "POCL_CACHE_DIR" in os.environ:
        pocl = private_dir(Path(os.environ["POCL_CACHE_DIR"]), "PoCL's kernel cache", "POCL_CACHE_DIR")
    else:
        pocl = private_dir(cache_dir() / "pocl", "PoCL's kernel cache", "XDG_CACHE_HOME")
    if "CACHEDB" in os.environ:
        database = Path(os.environ["CACHEDB"])
        private_dir(database.parent, "the folder of tinygrad's kernel database", "CACHEDB")
    else:
        # tinygrad keys its compiled kernels by the device's name, which is the Mali's on every backend: a
        # binary of the system PoCL fed to the fp16 PoCL is CL_INVALID_BINARY. One kernel cache per backend.
        backend = hashlib.sha256(str(icd).encode()).hexdigest()[:16]
        database = cache_dir() / f"tinygrad-{backend}.db"
    return {"POCL_CACHE_DIR": str(pocl), "CACHEDB": str(database)}


def _opencl_loaded() -> bool:
    # The ICD loader reads OPENCL_LAYERS once, when it first initialises; a mapped libOpenCL means it may have.
    with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
        return any("libOpenCL" in line for line in maps)
