"""The layer's device limits beyond memory: SVM counted like buffers where the profile's driver offers it and
absent where it does not; local memory and images refused past the profile's limits, not PoCL's.

PoCL's CPU device offers fine-grained SVM, 1 MiB of local memory and images of any size its RAM allows; without
the layer, SVM bypassed the cap (the G52's 128 MiB blocks reached an OOM kill where buffers failed with -4) and a
256 MiB image passed where a buffer of that size got -61.
"""

from __future__ import annotations

import pytest

from mali_hil.emulator.profile import CL_ERRORS, SVM_CAPABILITIES, available_profiles, load_profile
from tests.emulator._subprocess import PYOPENCL, run_ok

SVM_PROBE = PYOPENCL + """
dev = ctx.devices[0]
def svm(nbytes):
    try:
        return cl.SVMAllocation(ctx, nbytes, 0, cl.svm_mem_flags.READ_WRITE)
    except cl.Error:
        return None
over = svm(dev.max_mem_alloc_size + 1)
one = svm(128 * MiB)
live_one = live()
if one is not None:
    one.release()
blocks = []
while len(blocks) < dev.global_mem_size // (128 * MiB) + 2 and (block := svm(128 * MiB)) is not None:  # past it
    blocks.append(block)
live_all = live()
for block in blocks:
    block.release()
emit({"caps": dev.svm_capabilities, "over": over is not None, "one": one is not None, "live_one": live_one,
      "blocks": len(blocks), "live_all": live_all, "live_after": live(), "global": dev.global_mem_size})
"""


@pytest.mark.parametrize("key", available_profiles())
def test_svm_is_offered_as_the_profiles_driver_offers_it(key: str) -> None:
    profile = load_profile(f"{key}:1GiB")
    got = run_ok(profile.spec, SVM_PROBE)
    assert got["caps"] == SVM_CAPABILITIES[profile.svm]  # PoCL's own: coarse and fine grain
    if profile.svm == "none":
        assert (got["one"], got["blocks"], got["live_one"]) == (False, 0, 0)
        return
    assert got["over"] is False  # above max allocation: NULL, as the spec says
    assert (got["one"], got["live_one"], got["live_after"]) == (True, 128 << 20, 0)
    if profile.oom_trigger.value == "both":  # the driver's own counter fails past global memory
        assert got["blocks"] == got["global"] // (128 << 20)
        assert got["live_all"] == got["blocks"] * (128 << 20)


LIMITS_PROBE = PYOPENCL + """
import numpy as np
dev = ctx.devices[0]
src = '''__kernel void k(__global float *out, __local float *arg) {
  __local float own[%d];
  own[get_local_id(0)] = 1; arg[0] = 2; out[0] = own[0] + arg[0];
}'''
out = cl.Buffer(ctx, cl.mem_flags.READ_WRITE, 4)  # kept: a kernel argument holds no reference
def run(own_floats, arg_bytes):
    kernel = cl.Kernel(cl.Program(ctx, src % own_floats).build(), "k")
    kernel.set_args(out, cl.LocalMemory(arg_bytes))
    try:
        cl.enqueue_nd_range_kernel(queue, kernel, (1,), (1,))
        queue.finish()
        return 0
    except cl.Error as exc:
        return exc.code
limit = dev.local_mem_size
fmt = cl.ImageFormat(cl.channel_order.RGBA, cl.channel_type.FLOAT)  # 16 bytes a pixel
def image(width, height):
    try:
        cl.create_image(ctx, cl.mem_flags.READ_WRITE, fmt, (width, height)).release()
        return 0
    except cl.Error as exc:
        return exc.code
side = int((dev.max_mem_alloc_size // 16) ** 0.5) + 64  # a square image just above max allocation
emit({
    "local_mem": limit, "constant": dev.max_constant_buffer_size, "constant_args": dev.max_constant_args,
    "image2d": [dev.image2d_max_width, dev.image2d_max_height], "fits": run(16, 1024),
    "own_over": run(limit // 4 + 16, 4), "arg_over": run(16, limit),
    "small_image": image(64, 64), "wide_image": image(dev.image2d_max_width + 1, 1),
    "big_image": image(side, side) if side <= dev.image2d_max_width else None,
})
"""
CL_OUT_OF_RESOURCES, CL_INVALID_IMAGE_SIZE = -5, -40


@pytest.mark.parametrize("spec", ["mali-g52:1GiB", "mali-g610-rusticl:2GiB"])
def test_local_memory_and_images_follow_the_profiles_limits(spec: str) -> None:
    profile = load_profile(spec)
    got = run_ok(spec, LIMITS_PROBE)
    assert got["local_mem"] == profile.local_mem  # PoCL's own: 1 MiB
    assert (got["constant"], got["constant_args"]) == (profile.max_constant_buffer, profile.max_constant_args)
    assert got["image2d"] == [profile.image2d_max_size] * 2
    assert got["fits"] == 0
    # past the limit by the kernel's own __local array, or by a __local argument
    assert got["own_over"] == got["arg_over"] == CL_OUT_OF_RESOURCES
    assert (got["small_image"], got["wide_image"]) == (0, CL_INVALID_IMAGE_SIZE)
    if profile.over_max_alloc != "accept" and got["big_image"] is not None:
        assert got["big_image"] == CL_INVALID_IMAGE_SIZE  # a buffer of the size gets the profile's code
        assert CL_ERRORS[profile.over_max_alloc] != 0
