"""``naive``: the 2024 shape. Every file read whole into host memory, every tensor converted on the host,
then all of them copied to the device through tinygrad's real ``load_state_dict``.

Nothing is released until the last tensor is on the device: the file bytes, the converted host copies and
the device buffers all coexist, which on a Mali board (one RAM pool for host and GPU) is more than twice the
model. REFERENCE section 8: "read whole file, then copy to device" peaks at >= 2x the model size.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
from tinygrad import Device, Tensor
from tinygrad.nn.state import get_state_dict, load_state_dict, safe_dtypes

from mali_hil.harness.checkpoints import numpy_dtype
from mali_hil.harness.loaders.base import (
    BoundInputs,
    Loader,
    LoaderError,
    LoadOptions,
    TensorPlan,
    as_checkpoint,
    plan_load,
)


def load(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Tensor]:
    plans = plan_load(as_checkpoint(checkpoint), options)  # validation and selection come before the device
    files = {path: np.fromfile(path, dtype=np.uint8) for path in dict.fromkeys(p.path for p in plans)}
    host = {plan.name: _to_host(files[plan.path], plan) for plan in plans}
    shell = model_shell(plans, device)
    # Flattened first: tinygrad turns a 0-d array into a constant, which would never become a device buffer.
    weights = {p.name: Tensor(host[p.name].reshape(-1), device=device).reshape(p.shape) for p in plans}
    load_state_dict(shell, weights, strict=True, verbose=False, consume=True)
    Device[device].synchronize()  # tinygrad holds host staging copies until the queue drains
    loaded = get_state_dict(shell)
    return {plan.name: loaded[plan.name] for plan in plans}


def _to_host(file: np.ndarray, plan: TensorPlan) -> np.ndarray:
    raw = file[plan.offset : plan.offset + plan.source_bytes].view(numpy_dtype(plan.source_dtype))
    target = numpy_dtype(plan.final_dtype)
    with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN are legal weights, and overflow is the rule
        if plan.source_dtype == "BF16":
            # exo's host route: widen the whole tensor to float32, then narrow it (a full-size temporary).
            raw = raw.astype(np.float32)
        return raw if raw.dtype == target else raw.astype(target)


def model_shell(plans: tuple[TensorPlan, ...], device: str) -> SimpleNamespace:
    """An object tree whose tinygrad state-dict keys are the checkpoint's names, with unallocated leaves:
    ``model.layers.0.mlp.up_proj.weight`` becomes ``shell.model.layers.0.mlp.up_proj.weight``."""
    root = SimpleNamespace()
    for plan in plans:
        *parents, leaf = plan.name.split(".")
        node = root
        for part in parents:
            child = getattr(node, part, None)
            if child is None:
                child = SimpleNamespace()
                setattr(node, part, child)
            if not isinstance(child, SimpleNamespace):
                raise LoaderError(f"tensor name {plan.name!r} nests under another tensor's name; cannot build a model")
            node = child
        if hasattr(node, leaf):
            raise LoaderError(f"tensor name {plan.name!r} is also a prefix of other names; cannot build a model")
        setattr(node, leaf, Tensor.empty(*plan.shape, dtype=safe_dtypes[plan.final_dtype], device=device))
    return root


def device_bound(b: BoundInputs) -> int:
    """final_bytes: load_state_dict replaces each empty leaf with the copied tensor (no second device copy)."""
    return b.final_bytes


def ram_bound(b: BoundInputs) -> int:
    """file_bytes + final_bytes + max(final_bytes, largest_widened_bytes): whole files read and a host copy of
    every final tensor (a converted array, or tinygrad's aligned staging copy of a file view) stay to the end;
    on top, first the float32 temporary of one bf16 tensor being narrowed (host phase), later the device
    buffers (copy phase): the temporary is gone before the first device copy exists."""
    return b.file_bytes + b.final_bytes + max(b.final_bytes, b.largest_widened_bytes)


LOADER = Loader(
    name="naive",
    load=load,
    device_bound=device_bound,
    ram_bound=ram_bound,
    description="whole files read into host memory, all tensors converted on the host (bf16 -> f32 -> f16), copied"
    " to the device and loaded with tinygrad's load_state_dict",
)
