"""The layer's compiler front: a source naming ``__bf16`` (or ``double``, on a profile without fp64) fails to
build as on a Mali, whatever PoCL accepts; kernels see the profile's OpenCL version and fp64 macros; build logs
read as the driver's.

Mali's compiler knows no bf16 type ("unknown type name '__bf16'", exo issues 95/145/155); PoCL's clang accepts
``__bf16`` as a storage type, so without the layer a bf16-only kernel would build on the emulated Mali. PoCL's CPU
device has fp64, Bifrost and Valhall Malis do not.
"""

from __future__ import annotations

import pytest

from mali_hil.emulator.profile import available_profiles, load_profile
from tests.emulator._subprocess import run_ok

SPECS = [f"{key}:2GiB" for key in available_profiles()]

BF16_KERNEL = """\
// copies bf16 words: the storage type alone is what Mali's compiler refuses
__kernel void copy(__global const __bf16 *src, __global ushort *dst) {
  __global const ushort *bits = (__global const ushort *)src;
  dst[get_global_id(0)] = bits[get_global_id(0)];
}
"""

# `__bf16` only where a compiler never reads it as a type: comments, a string, longer identifiers; and a
# typedef named bfloat16, which is ordinary OpenCL C and builds on a Mali.
NOT_BF16_KERNEL = r"""
/* __bf16 in a block comment */ // and __bf16 in a line comment
typedef ushort bfloat16;
constant char note[] = "no __bf16 here";
__kernel void copy(__global const bfloat16 *src, __global ushort *dst) {
  int my__bf16 = 0, __bf16x = 1;
  dst[get_global_id(0)] = src[get_global_id(0)] + my__bf16 * __bf16x + note[0] * 0;
}
"""

PYOPENCL_BUILDS = f"""
import pyopencl as cl
ctx = cl.Context([cl.get_platforms()[0].get_devices()[0]])
dev = ctx.devices[0]
out = {{}}
for name, src in (("bf16", {BF16_KERNEL!r}), ("not_bf16", {NOT_BF16_KERNEL!r})):
    prg = cl._cl._Program(ctx, src)
    try:
        prg.build(b"")
        out[name] = {{"built": True}}
    except cl.RuntimeError as exc:
        out[name] = {{"built": False, "code": exc.code}}
    out[name]["status"] = prg.get_build_info(dev, cl.program_build_info.STATUS)
    out[name]["log"] = prg.get_build_info(dev, cl.program_build_info.LOG)
# separate compilation must refuse it too
prg = cl._cl._Program(ctx, {BF16_KERNEL!r})
try:
    prg.compile(b"")
    out["compile"] = {{"built": True}}
except cl.RuntimeError as exc:
    out["compile"] = {{"built": False, "code": exc.code}}
emit(out)
"""

CL_BUILD_PROGRAM_FAILURE, CL_COMPILE_PROGRAM_FAILURE = -11, -15
CL_BUILD_ERROR, CL_BUILD_SUCCESS = -2, 0


@pytest.mark.parametrize("spec", SPECS)
def test_bf16_source_fails_to_build_with_malis_log(spec: str) -> None:
    got = run_ok(spec, PYOPENCL_BUILDS)
    bf16 = got["bf16"]
    assert (bf16["built"], bf16["code"], bf16["status"]) == (False, CL_BUILD_PROGRAM_FAILURE, CL_BUILD_ERROR)
    lines = bf16["log"].splitlines()
    # the parameter's `__bf16` (line 2), located as clang-based Mali compilers print it; the comment's is not one
    line = BF16_KERNEL.splitlines()[1]
    column = line.index("__bf16")
    source_name = load_profile(spec).build_log_file
    assert lines[0] == f"{source_name}:2:{column + 1}: error: unknown type name '__bf16'"
    assert lines[1:3] == [line, " " * column + "^"]
    assert lines[-1] == "1 error generated."
    assert got["compile"] == {"built": False, "code": CL_COMPILE_PROGRAM_FAILURE}


def test_bf16_only_as_a_token_not_in_comments_strings_or_identifiers() -> None:
    got = run_ok(SPECS[0], PYOPENCL_BUILDS)
    assert got["not_bf16"]["built"] is True, got["not_bf16"]["log"]
    assert got["not_bf16"]["status"] == CL_BUILD_SUCCESS


TINYGRAD_BUILD = f"""
from tinygrad import Device
from tinygrad.device import CompileError
try:
    Device["CL"].cl_compiler.compile({BF16_KERNEL!r})
    emit({{"error": None}})
except CompileError as exc:
    emit({{"error": str(exc)}})
"""


def test_tinygrad_gets_malis_compile_error() -> None:
    got = run_ok("mali-g610:2GiB", TINYGRAD_BUILD)
    assert got["error"] is not None, "a __bf16 kernel compiled on the emulated Mali"
    column = BF16_KERNEL.splitlines()[1].index("__bf16") + 1
    assert f"<source>:2:{column}: error: unknown type name '__bf16'" in got["error"]
    assert "pocl" not in got["error"].lower()


FP64_PROBE = """
import pyopencl as cl, numpy as np
ctx = cl.Context([cl.get_platforms()[0].get_devices()[0]])
dev = ctx.devices[0]
queue = cl.CommandQueue(ctx)
def build(src):
    prg = cl._cl._Program(ctx, src)
    try:
        prg.build(b"")
        built = True
    except cl.RuntimeError:
        built = False
    return built, prg.get_build_info(dev, cl.program_build_info.LOG), prg
seen = "__kernel void k(__global int *out) {\\n"
seen += "#ifdef cl_khr_fp64\\n out[0] = 1;\\n#endif\\n#ifdef __opencl_c_fp64\\n out[1] = 1;\\n#endif\\n"
seen += " out[2] = __OPENCL_VERSION__;\\n}\\n"
_, _, prg = build(seen)
out = np.zeros(3, np.int32)
buf = cl.Buffer(ctx, cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR, hostbuf=out)
kernel = cl.Kernel(prg, "k")
kernel.set_arg(0, buf)
cl.enqueue_nd_range_kernel(queue, kernel, (1,), None)
cl.enqueue_copy(queue, out, buf)
double_built, double_log, _ = build("__kernel void d(__global double *x) { x[0] *= 2.0; }")
bad_built, bad_log, bad = build("__kernel void e(__global float *x) {\\n  x[0] = undefined_thing;\\n}")
try:
    features = [f.name for f in dev.opencl_c_features]
except cl.Error:
    features = None
emit({
    "macros": out.tolist(), "double_built": double_built, "double_log": double_log, "bad_built": bad_built,
    "bad_log": bad_log, "bad_source": bad.get_info(cl.program_info.SOURCE),
    "double_fp_config": dev.double_fp_config, "extensions": dev.extensions.split(),
    "platform_extensions": dev.platform.extensions.split(), "features": features,
    "double_widths": [dev.preferred_vector_width_double, dev.native_vector_width_double],
})
"""


@pytest.mark.parametrize("spec", SPECS)
def test_fp64_as_the_profile_says_and_kernels_see_the_profiles_version(spec: str) -> None:
    profile = load_profile(spec)
    got = run_ok(spec, FP64_PROBE)
    major, minor = (int(x) for x in profile.version.split()[1].split("."))
    has = int(profile.fp64)
    assert got["macros"] == [has, has, major * 100 + minor * 10]  # PoCL's own: [1, 1, 300]
    assert got["double_built"] is profile.fp64, got["double_log"]
    if not profile.fp64:
        assert got["double_log"].splitlines()[0] == (
            f"{profile.build_log_file}:1:26: error: use of type 'double' requires cl_khr_fp64 support"
        )
        assert got["double_fp_config"] == 0 and got["double_widths"] == [0, 0]
        assert "cl_khr_fp64" not in got["extensions"] + got["platform_extensions"]
        assert got["features"] is None or "__opencl_c_fp64" not in got["features"]
    else:
        assert got["double_fp_config"] != 0 and "cl_khr_fp64" in got["extensions"]


@pytest.mark.parametrize("spec", [SPECS[0], "mali-g610:2GiB"])
def test_build_log_is_the_drivers_not_pocls(spec: str) -> None:
    got = run_ok(spec, FP64_PROBE)
    source_name = load_profile(spec).build_log_file
    assert got["bad_built"] is False
    lines = got["bad_log"].splitlines()
    # the application's own line numbers, under the driver's name for the source; nothing of PoCL's
    assert lines[0] == f"{source_name}:2:10: error: use of undeclared identifier 'undefined_thing'", lines
    assert lines[-1] == "1 error generated."
    assert not any(word in got["bad_log"] for word in ("pocl", "kcache", "pthread", "failed to build")), lines
    assert got["bad_source"] == "__kernel void e(__global float *x) {\n  x[0] = undefined_thing;\n}"
