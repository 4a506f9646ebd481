"""The loader variants under test: ways to bring safetensors weights onto a tinygrad device.

``get_loader(name)`` resolves a built-in (``naive``, ``fix_bf16-device``, ``fix_bf16-host``, ``chunked``,
``mmap``), ``module:function``, or an entry point of group ``mali_hil.loaders``. Importing this package does not
import tinygrad; resolving a built-in does.
"""

from harness.loaders.base import (
    DEFAULT_CHUNK_BYTES,
    BoundInputs,
    Loader,
    LoaderError,
    LoadOptions,
    TensorPlan,
    as_checkpoint,
    bound_inputs,
    plan_load,
    select_keys,
)
from harness.loaders.registry import ENTRY_POINT_GROUP, as_loader, available, get_loader, register

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "ENTRY_POINT_GROUP",
    "BoundInputs",
    "LoadOptions",
    "Loader",
    "LoaderError",
    "TensorPlan",
    "as_checkpoint",
    "as_loader",
    "available",
    "bound_inputs",
    "get_loader",
    "plan_load",
    "register",
    "select_keys",
]
