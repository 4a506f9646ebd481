"""Safetensors checkpoints: strict validation, streaming (sharded) writing, model shapes and seeded values.

The validator reads only a file's prefix and header and follows the reference reader's checks
(``validate.py``); the writers stream tensor data chunk by chunk (``write.py``); ``models.py`` knows Llama
shapes and which tensors each exo node loads; ``fill.py`` makes reproducible values.
"""

from __future__ import annotations

from mali_hil.harness.checkpoints.faults import (
    CheckpointError,
    CheckpointNotFoundError,
    FillError,
    ModelError,
    ShardIndexError,
)
from mali_hil.harness.checkpoints.fill import FILL_DTYPES, FILL_KINDS, SPECIAL_BF16, make_fill, materialize
from mali_hil.harness.checkpoints.format import DTYPE_BITS, TensorInfo, TensorSpec, numpy_dtype
from mali_hil.harness.checkpoints.index import Checkpoint, validate_checkpoint
from mali_hil.harness.checkpoints.make import check_checkpoint, make_checkpoint
from mali_hil.harness.checkpoints.models import MODELS, ModelConfig, get_model, layer_of, node_keys, split_layers
from mali_hil.harness.checkpoints.validate import CheckpointInfo, validate
from mali_hil.harness.checkpoints.write import plan_shards, write_safetensors, write_sharded

__all__ = [
    "DTYPE_BITS",
    "FILL_DTYPES",
    "FILL_KINDS",
    "MODELS",
    "SPECIAL_BF16",
    "Checkpoint",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointNotFoundError",
    "FillError",
    "ModelConfig",
    "ModelError",
    "ShardIndexError",
    "TensorInfo",
    "TensorSpec",
    "check_checkpoint",
    "get_model",
    "layer_of",
    "make_checkpoint",
    "make_fill",
    "materialize",
    "node_keys",
    "numpy_dtype",
    "plan_shards",
    "split_layers",
    "validate",
    "validate_checkpoint",
    "write_safetensors",
    "write_sharded",
]
