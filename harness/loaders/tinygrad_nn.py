"""``tinygrad-nn``: what a user writes today, tinygrad 0.14's own ``nn.state`` route, unchanged: ``safe_load`` of each
file (lazy DISK tensors over an mmap of it), then ``load_state_dict`` into the model, which realizes one weight at a
time on the model's device. No fix of any kind.

Since tinygrad PR 14073 (in 0.14) the OpenCL renderer stores bf16 as ``ushort`` and converts in its kernels, so a
bf16 checkpoint loads on a Mali with nothing in between, where 2024's tinygrad emitted ``__bf16`` that Mali's
compiler refuses (exo 95/145, the reason for ``fix_bf16``). ``load_state_dict`` replaces each parameter with the
checkpoint's tensor, dtype included (``Tensor.replace`` checks the shape only), so floats stay on the device as
stored: bf16 as bf16, F32 as F32, twice the bytes of the fp16 the other variants end with. The variant declares
it (``keeps_float_dtype``): the worker's contract check and the oracle expect the stored dtype and bytes.

Like every variant it loads the node's shard only and refuses, before the device, a dtype no variant loads
(``plan_load``); the model is a shell whose state-dict keys are the checkpoint's names (naive's ``model_shell``),
as exo's model class would be; and it ends, as every variant does, by synchronizing the device while the DISK
tensors are still alive. Without that, tinygrad 0.14 leaves each file open: the DISK buffer is freed while the
device's copy still holds a view of its map, so ``mmap.close()`` raises BufferError, which tinygrad swallows, and
the map (with the descriptor Python's mmap keeps) stays until that file is loaded again. Seen by the leaks
property (1 descriptor and 1 mapping per file after a job), in a warm worker one per distinct file ever loaded;
after a load that ran out of device memory too, so it synchronizes on that path as well.
"""

from __future__ import annotations

import contextlib
from typing import Any

from tinygrad import Device, Tensor
from tinygrad.nn.state import get_state_dict, load_state_dict, safe_load

from mali_hil.harness.loaders.base import BoundInputs, Loader, LoadOptions, as_checkpoint, plan_load
from mali_hil.harness.loaders.naive import model_shell


def load(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Tensor]:
    plans = plan_load(as_checkpoint(checkpoint), options)  # validation and selection come before the device
    wanted = {plan.name for plan in plans}
    state: dict[str, Tensor] = {}
    for path in dict.fromkeys(plan.path for plan in plans):
        state.update((name, tensor) for name, tensor in safe_load(path).items() if name in wanted)
    model = model_shell(plans, device)
    try:
        load_state_dict(model, state, verbose=False)  # tinygrad's defaults otherwise: strict, realize, no consume
    except BaseException:
        with contextlib.suppress(Exception):  # the load's own error (a device-oom) is the one to report
            Device[device].synchronize()
        raise
    Device[device].synchronize()  # before ``state`` (the DISK tensors) goes, failed or not: see the module docstring
    loaded = get_state_dict(model)
    return {plan.name: loaded[plan.name] for plan in plans}


def device_bound(b: BoundInputs) -> int:
    """source_bytes: every selected tensor copied to the device as stored, one buffer each; nothing is cast."""
    return b.source_bytes


def ram_bound(b: BoundInputs) -> int:
    """2 x source_bytes: the device buffers, plus tinygrad's aligned host copy of each mapped tensor whose address
    is not 16-byte aligned, kept until the device synchronizes, which load_state_dict never asks for."""
    return 2 * b.source_bytes


LOADER = Loader(
    name="tinygrad-nn",
    load=load,
    device_bound=device_bound,
    ram_bound=ram_bound,
    description="tinygrad 0.14's own route, unchanged: safe_load, then load_state_dict; floats stay as stored"
    " (bf16 as ushort on OpenCL)",
    keeps_float_dtype=True,
)
