"""The oracle's streamed digests: the same digests as the whole tensors would give, read in bounded blocks.

The whole-tensor digest here is hashlib over canonical bits of arrays the reference library returns whole; the
streamed one cuts every tensor into blocks of a few bytes, so each way of cutting (trailing dimensions whole, a
run of indices, single indices before it) is exercised on small tensors.
"""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from mali_hil.harness.values import oracles
from mali_hil.harness.values.digest import digest_array


@pytest.fixture
def odd_shapes(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    tensors = {
        "scalar": np.array(1.5, np.float32),
        "empty": np.zeros((0, 3), ml_dtypes.bfloat16),
        "empty_inner": np.zeros((4, 0), np.float16),
        "vector": rng.integers(0, 1 << 16, 1001, dtype=np.uint16).view(ml_dtypes.bfloat16),
        "matrix": rng.integers(0, 1 << 32, (37, 29), dtype=np.uint32).view(np.float32),
        "four_d": rng.integers(0, 1 << 16, (3, 5, 7, 11), dtype=np.uint16).view(np.float16),
        "ints": rng.integers(-5, 5, (13, 17), dtype=np.int64),
        "bools": rng.integers(0, 2, 9, dtype=np.uint8).astype(bool),
    }
    path = tmp_path / "odd.safetensors"
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize("block", [1, 7, 64, 1000, oracles.BLOCK_BYTES])
@pytest.mark.parametrize("target", ["float16", "float32"])
def test_streamed_digests_equal_whole_tensor_digests(monkeypatch: pytest.MonkeyPatch, odd_shapes: Path, block: int,
                                                     target: str) -> None:  # fmt: skip
    """Catches blocks read out of C order, a last block lost or read twice, an index run that stops one short, a
    0-d or empty tensor mishandled, and a dtype or shape reported from a block instead of the tensor."""
    monkeypatch.setattr(oracles, "BLOCK_BYTES", block)
    got = oracles.expected_digests(odd_shapes, target_dtype=target)
    whole = oracles.expected_tensors(odd_shapes, target_dtype=target)
    assert {name: (d.dtype, d.shape, d.sha256, d.nbytes) for name, d in got.items()} == {
        name: (v.dtype.name, v.shape, digest_array(v), v.nbytes) for name, v in whole.items()
    }


@pytest.mark.parametrize("shape", [(1000,), (10, 100), (3, 4, 50), (2, 1, 3, 200)])
def test_blocks_never_exceed_the_block_size(monkeypatch: pytest.MonkeyPatch, shape: tuple[int, ...]) -> None:
    """The oracle's RAM is bounded by its block, not the tensor: every read is at most ``BLOCK_BYTES`` (here 256
    bytes of a 4-byte dtype) and the reads together are the tensor, in order."""
    monkeypatch.setattr(oracles, "BLOCK_BYTES", 256)
    tensor = np.arange(int(np.prod(shape)), dtype=np.uint32).reshape(shape)
    blocks = list(oracles._blocks(tensor, shape, tensor.itemsize))
    assert max(block.nbytes for block in blocks) <= 256
    assert np.array_equal(np.concatenate([block.reshape(-1) for block in blocks]), tensor.reshape(-1))
