"""``mali-hil checkpoint make|check``, run as a user runs it: a real process, real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from mali_hil.harness.checkpoints import get_model, make_fill, materialize
from tests.harness.cli.command import mali_hil


def test_make_then_check_a_single_file(tmp_path: Path) -> None:
    made = mali_hil("checkpoint", "make", "--model", "tiny", "--seed", "4", "tiny.safetensors", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert "21 tensors, 213632 bytes, 1 file(s)" in made.stdout
    tensors = load_file(tmp_path / "tiny.safetensors")
    spec = next(s for s in get_model("tiny").specs() if s.name == "model.norm.weight")
    assert np.array_equal(
        tensors[spec.name].view(np.uint16), materialize(make_fill("normal", seed=4), spec).view(np.uint16)
    )

    checked = mali_hil("checkpoint", "check", "tiny.safetensors", cwd=tmp_path)
    assert (checked.returncode, checked.stdout) == (0, "ok: 21 tensors, 213632 bytes, 1 file(s)\n")


def test_make_sharded_scaled_f16_then_check_folder_and_index(tmp_path: Path) -> None:
    made = mali_hil(
        "checkpoint", "make", "--model", "llama-3-8b", "--scale", "0.01", "--layers", "3", "--shards", "3",
        "--dtype", "F16", "--fill", "special", "out", cwd=tmp_path,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    config = get_model("llama-3-8b").scaled(0.01, layers=3)
    verdict = f"ok: {len(config.specs())} tensors, {config.nbytes('F16')} bytes, 3 file(s)\n"
    for target in ("out", "out/model.safetensors.index.json"):
        checked = mali_hil("checkpoint", "check", target, cwd=tmp_path)
        assert (checked.returncode, checked.stdout) == (0, verdict), checked.stderr
    shard = load_file(tmp_path / "out" / "model-00001-of-00003.safetensors")
    assert all(array.dtype == np.float16 for array in shard.values())


def test_check_a_corrupt_file_says_invalid_and_exits_1(tmp_path: Path) -> None:
    assert mali_hil("checkpoint", "make", "--model", "tiny", "t.safetensors", cwd=tmp_path).returncode == 0
    path = tmp_path / "t.safetensors"
    path.write_bytes(path.read_bytes()[:-2])
    checked = mali_hil("checkpoint", "check", path, cwd=tmp_path)
    assert checked.returncode == 1
    assert checked.stdout.startswith(f"invalid: MetadataIncompleteBufferError: {path}: ")
    assert "file has" in checked.stdout and "end of the file" in checked.stdout

    path.write_bytes(b"\xff" * 8 + b"{}")
    checked = mali_hil("checkpoint", "check", path, cwd=tmp_path)
    assert checked.returncode == 1 and checked.stdout.startswith("invalid: HeaderTooLargeError: ")


def test_check_a_broken_shard_index(tmp_path: Path) -> None:
    assert mali_hil("checkpoint", "make", "--model", "tiny", "--shards", "2", "out", cwd=tmp_path).returncode == 0
    (tmp_path / "out" / "model-00002-of-00002.safetensors").unlink()
    checked = mali_hil("checkpoint", "check", "out", cwd=tmp_path)
    assert checked.returncode == 1
    assert checked.stdout.startswith("invalid: ShardMissingError: ") and "model-00002-of-00002" in checked.stdout


def test_usage_errors_exit_2_with_the_fix(tmp_path: Path) -> None:
    unknown = mali_hil("checkpoint", "make", "--model", "gpt-5", "x.safetensors", cwd=tmp_path)
    assert unknown.returncode == 2
    assert "mali-hil: error: unknown model 'gpt-5'; available models: tiny, llama-3.2-1b, llama-3-8b" in unknown.stderr
    assert not (tmp_path / "x.safetensors").exists()

    missing = mali_hil("checkpoint", "check", "absent.safetensors", cwd=tmp_path)
    assert missing.returncode == 2 and "mali-hil: error: " in missing.stderr and "absent.safetensors" in missing.stderr

    for bad in (["--scale", "0"], ["--shards", "0"], ["--dtype", "I8"], ["--fill", "zeros"], ["--seed", "-1"]):
        refused = mali_hil("checkpoint", "make", "--model", "tiny", *bad, "x.safetensors", cwd=tmp_path)
        assert refused.returncode == 2 and bad[0] in refused.stderr, bad


def test_align_puts_the_data_section_where_asked(tmp_path: Path) -> None:
    for align, remainder in (("16", 0), ("8", 8)):
        name = f"a{align}.safetensors"
        made = mali_hil("checkpoint", "make", "--model", "tiny", "--align", align, name, cwd=tmp_path)
        assert made.returncode == 0, made.stderr
        prefix = int.from_bytes((tmp_path / name).read_bytes()[:8], "little")
        assert (8 + prefix) % 16 == remainder
        assert mali_hil("checkpoint", "check", name, cwd=tmp_path).returncode == 0
    refused = mali_hil("checkpoint", "make", "--model", "tiny", "--align", "4", "a4.safetensors", cwd=tmp_path)
    assert refused.returncode == 2 and "--align" in refused.stderr and not (tmp_path / "a4.safetensors").exists()
