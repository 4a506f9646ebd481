"""Driver profiles: the same GPU under Arm's libmali or Mesa's rusticl, the platform's identity, honest extensions,
and the work-group limit enforced at enqueue, all through the real layer."""

from __future__ import annotations

from pathlib import Path

import pytest

from mali_hil.emulator.profile import PROFILE_DIR, available_profiles, load_profile
from mali_hil.errors import ProfileError
from tests.emulator._subprocess import run_ok

GIB = 1 << 30
RUSTICL = [key for key in available_profiles() if key.endswith("-rusticl")]


def test_rusticl_variants_ship_for_the_gpus_panfrost_drives() -> None:
    assert {"mali-g610-rusticl", "mali-g52-rusticl", "mali-t860-rusticl"} <= set(RUSTICL)


@pytest.mark.parametrize("key", RUSTICL)
@pytest.mark.parametrize(("ram", "share"), [(2 * GIB, 0.5), (4 * GIB, 0.5), (6 * GIB, 0.75), (32 * GIB, 0.75)])
def test_rusticl_global_memory_follows_panfrosts_rule(key: str, ram: int, share: float) -> None:
    profile = load_profile(f"{key}:{ram // GIB}GiB")
    assert profile.global_mem == int(ram * share)
    assert profile.max_alloc == min(profile.global_mem, 2**31 - 1)
    assert profile.name.endswith("(Panfrost)") and profile.platform_name == "rusticl"
    assert "cl_khr_fp16" in profile.extensions and profile.platform_icd_suffix == "MESA"


def test_libmali_keeps_nearly_all_ram() -> None:
    libmali, rusticl = load_profile("mali-g610:8GiB"), load_profile("mali-g610-rusticl:8GiB")
    assert libmali.global_mem > 0.9 * 8 * GIB and rusticl.global_mem == 6 * GIB
    assert libmali.max_alloc == libmali.global_mem and rusticl.max_alloc == 2**31 - 1


def test_a_new_driver_profile_is_one_data_file(tmp_path: Path) -> None:
    text = (PROFILE_DIR / "mali-g610-rusticl.toml").read_text()
    custom = tmp_path / "my-board.toml"
    custom.write_text(text.replace("{ share = 0.75 }", "{ share = 0.625 }").replace("6442450944", "5368709120"))
    assert load_profile(f"{custom}:16GiB").global_mem == 10 * GIB
    custom.write_text(text.replace("{ share = 0.75 }", "{ share = 0.5 }"))  # the rule and the default disagree
    with pytest.raises(ProfileError, match="share rule"):
        load_profile(str(custom))


PLATFORM_AND_LIMITS = """
import ctypes
import numpy as np, pyopencl as cl
def icd_suffix():  # CL_PLATFORM_ICD_SUFFIX_KHR, which pyopencl does not know: asked through the system loader
    lib = ctypes.CDLL("libOpenCL.so.1")
    count = ctypes.c_uint32()
    lib.clGetPlatformIDs(0, None, ctypes.byref(count))
    ids = (ctypes.c_void_p * count.value)()
    lib.clGetPlatformIDs(count.value, ids, None)
    value = ctypes.create_string_buffer(256)
    assert lib.clGetPlatformInfo(ctypes.c_void_p(ids[0]), 0x0920, 256, value, None) == 0
    return value.value.decode()
platform = cl.get_platforms()[0]
dev = platform.get_devices()[0]
ctx = cl.Context([dev])
queue = cl.CommandQueue(ctx)
prg = cl.Program(ctx, "__kernel void k(__global int *a) { a[get_global_id(0) % 1024] = 1; }").build(cache_dir=False)
buf = cl.Buffer(ctx, cl.mem_flags.READ_WRITE, 4 << 20)
kernel = prg.k  # one kernel object (each prg.k is a new one)
kernel.set_arg(0, buf)
wg = dev.max_work_group_size
def launch(gws, lws):
    try:
        cl.enqueue_nd_range_kernel(queue, kernel, gws, lws).wait()
        return 0
    except cl.Error as exc:
        return exc.code
emit({
    "platform": [platform.name, platform.vendor, platform.version, platform.extensions,
                 icd_suffix()],
    "device": dev.name, "extensions": dev.extensions.split(), "max_work_group_size": wg,
    "max_work_item_sizes": list(dev.max_work_item_sizes),
    "kernel_wg": kernel.get_work_group_info(cl.kernel_work_group_info.WORK_GROUP_SIZE, dev),
    "at_max": launch((wg * 2,), (wg,)),
    "over_max": launch((wg * 4,), (wg * 2,)),
    "over_in_2d": launch((wg, 4), (wg // 2, 4)),
    "over_item": launch((4, wg * 2), (1, wg * 2)),
    "no_local": launch((wg * 8,), None),
})
"""
CL_INVALID_WORK_GROUP_SIZE, CL_INVALID_WORK_ITEM_SIZE = -54, -55


@pytest.mark.parametrize("key", ["mali-g52", "mali-g610-rusticl"])
def test_platform_identity_extensions_and_work_group_limits(key: str, backend) -> None:
    profile = load_profile(f"{key}:2GiB")
    got = run_ok(f"{key}:2GiB", PLATFORM_AND_LIMITS)
    name, vendor, version, extensions, suffix = got["platform"]
    assert (name, vendor, version) == (profile.platform_name, profile.platform_vendor, profile.platform_version)
    assert suffix == profile.platform_icd_suffix  # PoCL's own is "POCL"
    assert "pocl" not in extensions.lower()  # PoCL's cl_pocl_content_size is no Mali's
    assert extensions.split() == [e for e in profile.platform_extensions if backend.honours(e)]
    assert got["device"] == profile.name
    # advertised: only what the backend or the layer honours; nothing that is not the profile's
    assert got["extensions"] == [e for e in profile.extensions if backend.honours(e)]
    assert "cl_arm_import_memory" not in got["extensions"]  # its entry points do not exist under PoCL
    wg = profile.max_work_group_size
    assert got["max_work_group_size"] == wg and got["max_work_item_sizes"] == [wg, wg, wg]
    assert got["kernel_wg"] <= wg
    assert got["at_max"] == 0 and got["no_local"] == 0
    # 1-D above the limit breaks the per-dimension limit first (the spec's order of checks)
    assert got["over_max"] == got["over_item"] == CL_INVALID_WORK_ITEM_SIZE
    assert got["over_in_2d"] == CL_INVALID_WORK_GROUP_SIZE  # wg/2 x 4 = 2 wg work-items in one group
