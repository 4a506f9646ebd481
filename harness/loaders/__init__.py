"""The loader variants under test: ways to bring safetensors weights onto a tinygrad device.

``get_loader(name)`` resolves a built-in (``naive``, ``tinygrad-nn``, ``fix_bf16-device``, ``fix_bf16-host``,
``chunked``, ``mmap``), ``module:function``, or an entry point of group ``mali_hil.loaders``. Importing this package
does not import tinygrad; resolving a built-in does.
"""

from typing import TYPE_CHECKING

from mali_hil._lazy import lazy_exports
from mali_hil.harness.records.jobs import DEFAULT_CHUNK_BYTES

#: The built-in variants, in the order reports list them: name -> where its Loader record lives. Known without
#: importing tinygrad or numpy; adding a variant is one module and one line here.
BUILTIN_LOADERS = {
    "naive": "mali_hil.harness.loaders.naive:LOADER",
    "tinygrad-nn": "mali_hil.harness.loaders.tinygrad_nn:LOADER",
    "fix_bf16-device": "mali_hil.harness.loaders.fix_bf16:DEVICE_LOADER",
    "fix_bf16-host": "mali_hil.harness.loaders.fix_bf16:HOST_LOADER",
    "chunked": "mali_hil.harness.loaders.chunked:LOADER",
    "mmap": "mali_hil.harness.loaders.mmap:LOADER",
}
BUILTIN_NAMES = tuple(BUILTIN_LOADERS)
ENTRY_POINT_GROUP = "mali_hil.loaders"

# The rest is imported on first use (PEP 562): naming a loader in an option, a report or the plugin must not
# import numpy, ml_dtypes or tinygrad.
_LAZY = {
    "BoundInputs": "base", "Loader": "base", "LoaderError": "base", "LoadOptions": "base", "TensorPlan": "base",
    "as_checkpoint": "base", "bound_inputs": "base", "plan_load": "base", "select_keys": "base",
    "as_loader": "registry", "available": "registry", "get_loader": "registry", "register": "registry",
}  # fmt: skip

if TYPE_CHECKING:
    from mali_hil.harness.loaders.base import (
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
    from mali_hil.harness.loaders.registry import as_loader, available, get_loader, register


__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = [
    "BUILTIN_LOADERS",
    "BUILTIN_NAMES",
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
