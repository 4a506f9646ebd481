"""The fp16 backend: a PoCL with cl_khr_fp16 (``mali-hil emulator build-backend``) is used when built, the system's
PoCL otherwise with fp16 honestly labelled emulated, and on the fp16 backend half is native under the Mali face.

Building takes 4-7 min of CPU (165 s wall on an idle 2-core machine; an hour on a busy one): over the CI budget,
so CI does not build it; the native-fp16 tests skip where the build is absent, and say so; the selection tests run
everywhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mali_hil.emulator import backend_build
from mali_hil.emulator.backend import POCL_ENV, backend_icd, system_icd
from mali_hil.emulator.backend_build import ICD_NAME, POCL_VERSION, build_key, built_backend
from mali_hil.errors import BackendError
from tests.emulator._subprocess import run_ok

NOT_BUILT = (
    "no PoCL with cl_khr_fp16 is built on this machine "
    "(`mali-hil emulator build-backend`: about 7 min of CPU, an hour on a busy machine)"
)


def test_the_key_names_everything_that_decides_the_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    if build_key() is None:
        pytest.skip("LLVM 16 is not installed, so no fp16 backend can be built or found here")
    key = build_key()
    monkeypatch.setattr(backend_build, "CMAKE_OPTIONS", (*backend_build.CMAKE_OPTIONS, "-DENABLE_ASSERTIONS=ON"))
    assert build_key() != key
    monkeypatch.setattr(backend_build, "host_cpu", lambda: "x86-64-v2")
    assert build_key() not in (key, None)


def test_a_built_backend_is_preferred_and_system_can_be_forced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(POCL_ENV, raising=False)
    key = build_key()
    if key is None:  # no LLVM 16: nothing can be built, boards run on the system's PoCL, and fp16 cannot be demanded
        assert backend_icd() == system_icd()
        monkeypatch.setenv(POCL_ENV, "fp16")
        with pytest.raises(BackendError, match="build-backend"):
            backend_icd()
        return
    assert built_backend() is None and backend_icd() == system_icd()
    # a finished build is its install folder with our ICD file in it; here it names the system's real libpocl
    prefix = tmp_path / "mali-hil" / "backend" / f"pocl-{POCL_VERSION}-{key}"
    prefix.mkdir(parents=True)
    (prefix / ICD_NAME).write_text(system_icd().read_text())
    assert backend_icd() == prefix / ICD_NAME
    got = run_ok("mali-g52:512MiB", "import pyopencl as cl\nemit(cl.get_platforms()[0].get_devices()[0].name)")
    assert got == "Mali-G52"
    monkeypatch.setenv(POCL_ENV, "system")
    assert backend_icd() == system_icd()
    monkeypatch.setenv(POCL_ENV, "newest")
    with pytest.raises(BackendError, match="MALI_HIL_POCL"):
        backend_icd()


HALF = """
import numpy as np, pyopencl as cl
from mali_hil.runtime.layer_stats import read_layer_stats
dev = cl.get_platforms()[0].get_devices()[0]
ctx = cl.Context([dev])
queue = cl.CommandQueue(ctx)
src = '''#pragma OPENCL EXTENSION cl_khr_fp16 : enable
__kernel void twice(__global const half *x, __global half *y) { size_t i = get_global_id(0); y[i] = x[i] * (half)2; }'''
prg = cl.Program(ctx, src).build()
x = np.array([1.5, 6.1e-5, 3e-7, 32752, -0.0], dtype=np.float16)  # normal, smallest normal, subnormal, ...
mf = cl.mem_flags
xb = cl.Buffer(ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=x)
yb = cl.Buffer(ctx, mf.WRITE_ONLY, x.nbytes)
prg.twice(queue, x.shape, None, xb, yb)
y = np.empty_like(x)
cl.enqueue_copy(queue, y, yb).wait()
emit({"extensions": dev.extensions.split(), "half_config": dev.half_fp_config,
      "y": y.view(np.uint16).tolist(), "fp16_advertised": read_layer_stats().fp16_advertised})
"""


@pytest.mark.skipif(built_backend() is None, reason=NOT_BUILT)
def test_half_is_native_on_the_fp16_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    monkeypatch.setenv(POCL_ENV, "fp16")  # this backend's test, also where the caller forces the system's PoCL
    got = run_ok("mali-g610:2GiB", HALF)
    assert "cl_khr_fp16" in got["extensions"] and got["fp16_advertised"] == 1 and got["half_config"] != 0
    x = np.array([1.5, 6.1e-5, 3e-7, 32752, -0.0], dtype=np.float16)
    assert got["y"] == (x * np.float16(2)).view(np.uint16).tolist()  # subnormals kept, 65504 reached, -0 kept
