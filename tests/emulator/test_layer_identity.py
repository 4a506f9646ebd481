"""The layer makes PoCL answer as the profiled Mali: through pyopencl, tinygrad and raw calls; plus its build.

Every scenario runs real PoCL through the real ICD loaders with the real layer, in a fresh process.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mali_hil.emulator import build
from mali_hil.emulator.build import build_layer, layer_path
from mali_hil.emulator.profile import Profile, available_profiles, load_profile
from mali_hil.errors import LayerBuildError
from tests.emulator._subprocess import run_ok, run_snippet

CL_INVALID_VALUE = -30
CL_DEVICE_NOT_FOUND = -1
CL_DEVICE_TYPE_GPU = 4
SPECS = [f"{key}:2GiB" for key in available_profiles()]  # 2 GiB boards fit any CI machine


def expected_extensions(profile: Profile, backend) -> list[str]:
    """The profile's extensions the backend (or the layer) honours, in the profile's order."""
    return [e for e in profile.extensions if backend.honours(e)]


PYOPENCL_IDENTITY = """
import pyopencl as cl
from mali_hil.runtime.layer_stats import read_layer_stats
platform = cl.get_platforms()[0]
dev = platform.get_devices()[0]
emit({
    "platform": [platform.name, platform.vendor, platform.version],
    "name": dev.name, "vendor": dev.vendor, "vendor_id": dev.vendor_id, "version": dev.version,
    "driver_version": dev.driver_version, "opencl_c_version": dev.opencl_c_version,
    "extensions": dev.extensions.split(" "),
    "extensions_with_version": [[nv.name, nv.version] for nv in dev.extensions_with_version],
    "global_mem": dev.global_mem_size, "max_alloc": dev.max_mem_alloc_size,
    "max_work_group_size": dev.max_work_group_size, "compute_units": dev.max_compute_units,
    "max_clock_mhz": dev.max_clock_frequency, "unified_memory": dev.host_unified_memory,
    "type": dev.type, "half_fp_config": dev.get_info(cl.device_info.HALF_FP_CONFIG),
    "numeric_version": dev.numeric_version,
    "stats": read_layer_stats().to_dict(),
})
"""


@pytest.mark.parametrize("spec", SPECS)
def test_pyopencl_sees_the_profile(spec: str, backend) -> None:
    profile = load_profile(spec)
    got = run_ok(spec, PYOPENCL_IDENTITY)
    exts = expected_extensions(profile, backend)
    assert got["platform"] == [profile.platform_name, profile.platform_vendor, profile.platform_version]
    assert (got["name"], got["vendor"], got["vendor_id"]) == (profile.name, profile.vendor, profile.vendor_id)
    assert (got["version"], got["driver_version"]) == (profile.version, profile.driver_version)
    assert got["opencl_c_version"] == profile.opencl_c_version
    assert got["extensions"] == exts  # same order, single spaces, nothing added
    assert got["extensions_with_version"] == [[e, 1 << 22] for e in exts]  # CL_MAKE_VERSION(1, 0, 0)
    assert (got["global_mem"], got["max_alloc"]) == (profile.global_mem, profile.max_alloc)
    assert got["max_work_group_size"] == profile.max_work_group_size
    assert (got["compute_units"], got["max_clock_mhz"]) == (profile.compute_units, profile.max_clock_mhz)
    assert bool(got["unified_memory"]) == profile.unified_memory
    assert got["type"] == CL_DEVICE_TYPE_GPU
    major, minor = (int(x) for x in profile.version.split()[1].split("."))
    assert got["numeric_version"] == (major << 22) | (minor << 12)
    assert got["stats"]["cap_bytes"] == profile.global_mem
    assert got["stats"]["fp16_advertised"] == int(backend.has_fp16)
    if not backend.has_fp16:
        assert got["half_fp_config"] == 0


TINYGRAD_IDENTITY = """
import ctypes
from tinygrad import Device
from tinygrad.runtime.autogen import opencl as cl
dev = Device["CL"]
def info(param, ctype):
    value = ctype()
    assert cl.clGetDeviceInfo(dev.cl_dev, param, ctypes.sizeof(value), ctypes.byref(value), None) == 0
    return value.value
emit({
    "name": dev.device_name, "driver_version": dev.driver_version, "exts": dev.device_exts,
    "global_mem": info(cl.CL_DEVICE_GLOBAL_MEM_SIZE, ctypes.c_uint64),
    "max_alloc": info(cl.CL_DEVICE_MAX_MEM_ALLOC_SIZE, ctypes.c_uint64),
    "vendor_id": info(cl.CL_DEVICE_VENDOR_ID, ctypes.c_uint32),
    "type": info(cl.CL_DEVICE_TYPE, ctypes.c_uint64),
    "work_group": info(cl.CL_DEVICE_MAX_WORK_GROUP_SIZE, ctypes.c_size_t),
    "half_fp_config": info(0x1033, ctypes.c_uint64),  # CL_DEVICE_HALF_FP_CONFIG
})
"""


@pytest.mark.parametrize("spec", SPECS)
def test_tinygrad_sees_the_profile(spec: str, backend) -> None:
    profile = load_profile(spec)
    got = run_ok(spec, TINYGRAD_IDENTITY)
    assert (got["name"], got["driver_version"]) == (profile.name, profile.driver_version)
    assert got["exts"] == expected_extensions(profile, backend)
    assert not [e for e in got["exts"] if "bf16" in e.lower()]
    assert ("cl_khr_fp16" in got["exts"]) == backend.has_fp16
    assert (got["global_mem"], got["max_alloc"]) == (profile.global_mem, profile.max_alloc)
    assert (got["vendor_id"], got["type"]) == (profile.vendor_id, CL_DEVICE_TYPE_GPU)
    assert got["work_group"] == profile.max_work_group_size
    if not backend.has_fp16:
        assert got["half_fp_config"] == 0


def test_tinygrad_computes_on_the_emulated_device() -> None:
    got = run_ok("mali-g52:256MiB", 'from tinygrad import Tensor\nemit((Tensor([1.0, 2.0], device="CL") * 3).tolist())')
    assert got == [3.0, 6.0]


RAW_SIZE_QUERIES = """
import ctypes
from tinygrad import Device
from tinygrad.runtime.autogen import opencl as cl
dev = Device["CL"].cl_dev
out = {}
for name, param in [("name", cl.CL_DEVICE_NAME), ("exts", cl.CL_DEVICE_EXTENSIONS),
                    ("exts_v", cl.CL_DEVICE_EXTENSIONS_WITH_VERSION), ("mem", cl.CL_DEVICE_GLOBAL_MEM_SIZE),
                    ("type", cl.CL_DEVICE_TYPE)]:
    size = ctypes.c_size_t(12345)
    status_size = cl.clGetDeviceInfo(dev, param, 0, None, ctypes.byref(size))
    small = ctypes.create_string_buffer(size.value - 1)
    status_small = cl.clGetDeviceInfo(dev, param, size.value - 1, small, None)
    exact = ctypes.create_string_buffer(size.value)
    written = ctypes.c_size_t(0)
    status_exact = cl.clGetDeviceInfo(dev, param, size.value, exact, ctypes.byref(written))
    out[name] = [status_size, size.value, status_small, status_exact, written.value, exact.raw.hex()]
emit(out)
"""


def test_size_queries_follow_the_protocol() -> None:
    profile = load_profile("mali-t860:1GiB")
    got = run_ok(profile.spec, RAW_SIZE_QUERIES)
    for name, (status_size, size, status_small, status_exact, written, _) in got.items():
        assert (status_size, status_small, status_exact) == (0, CL_INVALID_VALUE, 0), name
        assert written == size, name
    assert got["name"][1] == len(profile.name) + 1
    assert bytes.fromhex(got["name"][5]) == profile.name.encode() + b"\0"
    assert got["exts_v"][1] % 68 == 0 and got["exts_v"][1] > 0  # sizeof(cl_name_version) == 68
    assert int.from_bytes(bytes.fromhex(got["mem"][5]), "little") == profile.global_mem
    assert (got["mem"][1], got["type"][1]) == (8, 8)


DEVICE_TYPES = """
import ctypes
from tinygrad.runtime.autogen import opencl as cl
platform = cl.cl_platform_id()
assert cl.clGetPlatformIDs(1, ctypes.byref(platform), None) == 0
def count(device_type):
    n = ctypes.c_uint32(99)
    return [cl.clGetDeviceIDs(platform, device_type, 0, None, ctypes.byref(n)), n.value]
emit({"gpu": count(cl.CL_DEVICE_TYPE_GPU), "cpu": count(cl.CL_DEVICE_TYPE_CPU),
      "all": count(cl.CL_DEVICE_TYPE_ALL), "default": count(cl.CL_DEVICE_TYPE_DEFAULT)})
"""


def test_the_device_is_a_gpu_and_not_a_cpu() -> None:
    got = run_ok("mali-g610:1GiB", DEVICE_TYPES)
    assert got["gpu"] == [0, 1]
    assert got["cpu"] == [CL_DEVICE_NOT_FOUND, 0]
    assert got["all"] == [0, 1] and got["default"] == [0, 1]


PLAIN_NAME = """
import pyopencl as cl
emit(cl.get_platforms()[0].get_devices()[0].name)
"""


def test_missing_config_leaves_plain_pocl_and_says_why(tmp_path: Path) -> None:
    missing = tmp_path / "nope.conf"
    run = run_snippet(PLAIN_NAME, {"OPENCL_LAYERS": str(layer_path()), "MALI_HIL_LAYER_CONFIG": str(missing)})
    assert run.returncode == 0, run.stderr
    assert "Mali" not in run.result
    lines = [line for line in run.stderr.splitlines() if line.startswith("mali-hil layer: ")]
    assert len(lines) == 1 and str(missing) in lines[0]


def _unknown_key(text: str) -> tuple[str, str]:
    return text + "colour=blue\n", f"line {len(text.splitlines()) + 1}"


def _bad_number(text: str) -> tuple[str, str]:
    lines = text.splitlines(keepends=True)
    where = next(i for i, line in enumerate(lines) if line.startswith("max_alloc="))
    lines[where] = "max_alloc=12x\n"
    return "".join(lines), f"line {where + 1}"


def _missing_key(text: str) -> tuple[str, str]:
    kept = [line for line in text.splitlines(keepends=True) if not line.startswith("oom_failure=")]
    return "".join(kept), "oom_failure"


@pytest.mark.parametrize("mutation", [_unknown_key, _bad_number, _missing_key])
def test_bad_config_is_refused_with_the_place(tmp_path: Path, mutation) -> None:
    from mali_hil.emulator.emulated_board import layer_config_text

    text, words = mutation(layer_config_text(load_profile("mali-g52")))
    conf = tmp_path / "bad.conf"
    conf.write_text(text, encoding="utf-8")
    run = run_snippet(PLAIN_NAME, {"OPENCL_LAYERS": str(layer_path()), "MALI_HIL_LAYER_CONFIG": str(conf)})
    assert run.returncode == 0, run.stderr
    assert "Mali" not in run.result
    lines = [line for line in run.stderr.splitlines() if line.startswith("mali-hil layer: ")]
    assert len(lines) == 1 and words in lines[0], run.stderr


NAME_AND_EXTENSIONS = """
import pyopencl as cl
dev = cl.get_platforms()[0].get_devices()[0]
emit([dev.name, dev.extensions.split()])
"""


def test_bf16_in_a_hand_written_config_is_never_advertised(tmp_path: Path, backend) -> None:
    from mali_hil.emulator.emulated_board import layer_config_text

    profile = load_profile("mali-g52")
    bf16 = " cl_khr_bf16 cl_arm_BFloat16_dot cl_ext_bfloat16_conversions"
    text = "".join(
        line.rstrip("\n") + bf16 + "\n" if line.startswith("extensions=") else line
        for line in layer_config_text(profile).splitlines(keepends=True)
    )
    conf = tmp_path / "bf16.conf"
    conf.write_text(text, encoding="utf-8")
    from mali_hil.emulator.backend import backend_icd

    # on the backend the fixture asked, which is the fp16 PoCL where one is built, not the system's
    env = {"OCL_ICD_VENDORS": str(backend_icd()), "OCL_ICD_FILENAMES": ""}
    run = run_snippet(
        NAME_AND_EXTENSIONS, {**env, "OPENCL_LAYERS": str(layer_path()), "MALI_HIL_LAYER_CONFIG": str(conf)}
    )
    name, extensions = run.result
    assert name == profile.name
    assert extensions == expected_extensions(profile, backend)


LAYER_INFO = """
import ctypes
lib = ctypes.CDLL(LAYER)
version, name, size = ctypes.c_uint32(), ctypes.create_string_buffer(64), ctypes.c_size_t()
emit([lib.clGetLayerInfo(0x4240, 4, ctypes.byref(version), None), version.value,
      lib.clGetLayerInfo(0x4241, 64, name, ctypes.byref(size)), name.value.decode(), size.value,
      lib.clGetLayerInfo(0x4241, 3, name, None), lib.clGetLayerInfo(0x1234, 64, name, None),
      hasattr(lib, "clInitLayerWithProperties"), hasattr(lib, "clDeinitLayer"), hasattr(lib, "clInitLayer")])
"""


def test_layer_info_and_entry_points() -> None:
    got = run_snippet(f"LAYER = {str(layer_path())!r}\n" + LAYER_INFO).result
    assert got == [0, 100, 0, "mali-hil", 9, CL_INVALID_VALUE, CL_INVALID_VALUE, True, True, True]


def test_build_is_cached_and_forced_rebuild_replaces_it() -> None:
    first = build_layer()
    assert layer_path() == first and first.is_file()
    before = first.stat().st_mtime_ns
    assert build_layer() == first and first.stat().st_mtime_ns == before
    assert build_layer(force=True) == first and first.stat().st_mtime_ns != before


def test_missing_compiler_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(LayerBuildError, match="apt-get install gcc opencl-c-headers"):
        build_layer(force=True)


def test_missing_headers_name_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(build, "INCLUDE_DIR", tmp_path)
    with pytest.raises(LayerBuildError, match=r"cl_layer\.h.*apt-get install gcc opencl-c-headers"):
        build_layer(force=True)


def test_compile_error_shows_the_compiler_output(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    broken = tmp_path / "mali_layer.c"
    broken.write_text("int main(void) { return undeclared_thing; }\n", encoding="utf-8")
    monkeypatch.setattr(build, "SOURCE", broken)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(LayerBuildError, match="undeclared_thing"):
        build_layer()
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # no half-built file left behind


def test_an_edit_to_any_part_of_the_layer_is_a_new_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Catches: a cache key over mali_layer.c alone, which would keep loading a stale layer after an edit to one
    of the parts it includes (the .so would still match its own recorded hash)."""
    parts = tmp_path / "layer"
    shutil.copytree(build.SOURCE.parent, parts)
    monkeypatch.setattr(build, "SOURCE", parts / build.SOURCE.name)
    monkeypatch.setattr(build, "_built", None)  # restored after: later tests must find the real layer's build
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = build_layer()
    stats = parts / "stats.c"
    stats.write_text(stats.read_text(encoding="utf-8") + "\n/* edited */\n", encoding="utf-8")
    second = build_layer()
    assert first != second and first.is_file() and second.is_file()
    assert build_layer() == second  # and an unchanged source is the same build


def test_concurrent_first_builds_agree_and_leave_no_debris(tmp_path: Path) -> None:
    code = "from mali_hil.emulator.build import layer_path\nemit(str(layer_path()))\n"
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = list(pool.map(lambda _: run_snippet(code, env), range(4)))
    paths = {run.result for run in runs}
    assert len(paths) == 1
    built = Path(paths.pop())
    assert built.parent == tmp_path / "mali-hil"
    assert run_snippet(f"import ctypes\nemit(hasattr(ctypes.CDLL({str(built)!r}), 'clInitLayer'))").result
    assert not list(built.parent.glob("*.tmp"))
