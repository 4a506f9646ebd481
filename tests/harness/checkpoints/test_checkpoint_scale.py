"""``checkpoint make --scale S`` keeps the fraction S of each dimension, and no checkpoint is begun that cannot fit.

``--scale 64`` (meant as "shrink by 64") once began a 31 GB file: above 1 is refused with the fraction to write.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mali_hil.harness.checkpoints import CheckpointError, get_model, make_checkpoint
from tests.harness.cli.command import mali_hil


def test_scale_above_one_is_refused_with_the_fraction_to_write(tmp_path: Path) -> None:
    done = mali_hil("checkpoint", "make", "--model", "llama-3-8b", "--scale", "64", "out.safetensors", cwd=tmp_path)
    assert done.returncode == 2
    assert "--scale 1/64" in done.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_scale_as_a_fraction_shrinks(tmp_path: Path) -> None:
    args = ("checkpoint", "make", "--model", "llama-3-8b", "--scale", "1/64", "--layers", "1", "out.safetensors")
    done = mali_hil(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    expected = get_model("llama-3-8b").scaled(1 / 64, layers=1).nbytes("BF16")
    assert f"{expected} bytes" in done.stdout
    assert (tmp_path / "out.safetensors").stat().st_size < 2 * expected  # the header is small


def test_a_checkpoint_larger_than_the_free_disk_is_refused_before_writing(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    per_layer = (
        get_model("llama-3-8b").scaled(1.0, layers=2).nbytes() - get_model("llama-3-8b").scaled(1.0, layers=1).nbytes()
    )
    layers = free // per_layer + 2  # a real model's layers, just more of them than the disk holds
    with pytest.raises(CheckpointError, match="GiB free"):
        make_checkpoint("llama-3-8b", tmp_path / "big.safetensors", layers=int(layers))
    assert list(tmp_path.iterdir()) == []
    done = mali_hil("checkpoint", "make", "--model", "llama-3-8b", "--layers", str(layers), "big.safetensors",
                    cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2 and "mali-hil: error:" in done.stderr and "GiB free" in done.stderr
    assert list(tmp_path.iterdir()) == []
