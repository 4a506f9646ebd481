"""Points 6, 9, 14 (FIFO, long path) and 15 (integers past DBL_MAX) of issue 8: hostile checkpoint paths and
headers are refused at once, as checkpoint problems, without leaking what a non-checkpoint file holds.

Before: a shard symlinked to a file outside the checkpoint folder was read (a valid one loaded; /etc/shadow's
first 8 bytes were printed as "header length prefix is N"); a FIFO hung ``checkpoint check``; a 300-character
path gave an ENAMETOOLONG traceback; a 24 MB header was parsed inside the board's RAM budget and the job ended
``oom-killed``; a 400-digit integer in a header was accepted where the format's JSON parser refuses it.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import SafetensorError
from safetensors.numpy import load as reference_load

from mali_hil.harness.checkpoints import make_checkpoint, validate_checkpoint
from mali_hil.harness.checkpoints.faults import (
    CheckpointNotFoundError,
    DuplicateKeyError,
    HeaderTooLargeError,
    InvalidHeaderDeserializationError,
    ShardOutsideError,
)
from mali_hil.harness.checkpoints.validate import JOB_HEADER_LIMIT, validate
from mali_hil.harness.devices import make_device
from mali_hil.harness.records.jobs import LoadJob
from mali_hil.harness.records.results import Status

SECRET = b"hunter2!" + b"s3cr3t-data" * 4


def _cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mali_hil.harness.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip


@pytest.fixture
def sharded(tmp_path: Path) -> Path:
    checkpoint = make_checkpoint("tiny", tmp_path / "ck", shards=2)
    assert checkpoint.index is not None
    return checkpoint.index


def _secret(tmp_path: Path) -> Path:
    secret = tmp_path / "outside" / "secret"
    secret.parent.mkdir()
    secret.write_bytes(SECRET)
    return secret


def test_a_shard_linked_outside_the_folder_is_refused_without_reading_it(sharded: Path, tmp_path: Path) -> None:
    shard = sorted(sharded.parent.glob("*.safetensors"))[0]
    shard.unlink()
    shard.symlink_to(_secret(tmp_path))
    with pytest.raises(ShardOutsideError, match="leads outside") as caught:
        validate_checkpoint(sharded)
    assert str(int.from_bytes(SECRET[:8], "little")) not in str(caught.value)


def test_a_valid_shard_linked_outside_the_folder_is_refused_too(sharded: Path, tmp_path: Path) -> None:
    shard = sorted(sharded.parent.glob("*.safetensors"))[0]
    elsewhere = tmp_path / "elsewhere.safetensors"
    shard.rename(elsewhere)
    shard.symlink_to(elsewhere)
    with pytest.raises(ShardOutsideError):
        validate_checkpoint(sharded)


def test_a_hugging_face_cache_snapshot_still_validates(sharded: Path, tmp_path: Path) -> None:
    """snapshots/REV/* are links into ../../blobs: the layout of every model downloaded with huggingface_hub."""
    blobs, snapshot = tmp_path / "hub" / "blobs", tmp_path / "hub" / "snapshots" / "rev"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for index, path in enumerate(sorted(sharded.parent.iterdir())):
        path.rename(blobs / f"blob{index}")
        (snapshot / path.name).symlink_to(Path("../../blobs") / f"blob{index}")
    checkpoint = validate_checkpoint(snapshot / sharded.name)
    assert len(checkpoint.files) == 2


def test_a_non_checkpoint_file_is_described_not_echoed(tmp_path: Path) -> None:
    with pytest.raises(HeaderTooLargeError) as caught:
        validate(_secret(tmp_path))
    assert str(int.from_bytes(SECRET[:8], "little")) not in str(caught.value)


def test_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointNotFoundError, match="is a FIFO"):
        validate_checkpoint(fifo)
    done = _cli("checkpoint", "check", fifo)  # hung forever before, waiting for a writer
    assert done.returncode == 2 and "is a FIFO" in done.stderr and "Traceback" not in done.stderr


def test_a_path_too_long_is_a_one_line_error(tmp_path: Path) -> None:
    long = tmp_path / ("x" * 300) / "model.safetensors"
    done = _cli("checkpoint", "check", long)
    assert done.returncode == 2 and done.stderr.startswith("mali-hil: error:"), done.stderr
    assert "File name too long" in done.stderr and "Traceback" not in done.stderr


def _header(extra: str) -> bytes:
    raw = ('{"t":{"dtype":"F16","shape":[1],"data_offsets":[0,2],"x":' + extra + "}}").encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"\0\0"


@pytest.mark.parametrize(("digits", "valid"), [(300, True), (400, False)])
def test_integers_past_dbl_max_follow_the_formats_json_rule(tmp_path: Path, digits: int, valid: bool) -> None:
    """serde_json reads an integer beyond 64 bits as an f64, and refuses one beyond f64's range (1.8e308)."""
    data = _header("1" + "0" * digits)
    path = tmp_path / "big.safetensors"
    path.write_bytes(data)
    try:
        reference_load(data)
        reference_valid = True
    except SafetensorError:
        reference_valid = False
    assert reference_valid is valid
    if valid:
        validate(path)
    else:
        with pytest.raises(InvalidHeaderDeserializationError, match="out of range"):
            validate(path)


def _wide(path: Path, count: int, cut: int = 0) -> Path:
    """A header of ``count`` one-element tensors (68 bytes each); ``cut`` bytes missing from the buffer's end."""
    entries = ",".join(f'"t{i}":{{"dtype":"F16","shape":[1],"data_offsets":[{2 * i},{2 * i + 2}]}}' for i in
                       range(count))  # fmt: skip
    raw = ("{" + entries + "}").encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(2 * count - cut))
    assert json.loads(raw)["t1"]["data_offsets"] == [2, 4]
    return path


def test_a_header_too_large_for_a_job_is_a_checkpoint_error_not_an_oom_kill(tmp_path: Path) -> None:
    """Issue 8: a 24 MB header (300,000 tensors), legal for the format, was parsed inside a 256 MiB board's budget
    and the worker OOM-killed. Issue 25: under the 16 MiB job limit that followed, a 15 MB one still was (it took
    240 MiB to parse). Now the limit is one the board's worker can parse within (4 MiB), and a header just under it
    is parsed there to its end: the checkpoint's own fault is reported, not an OOM kill."""
    too_wide = _wide(tmp_path / "wide.safetensors", 220_000)
    assert 14_000_000 < too_wide.stat().st_size - 2 * 220_000 < JOB_HEADER_LIMIT << 2
    fits = _wide(tmp_path / "fits.safetensors", (JOB_HEADER_LIMIT - 100_000) // 69, cut=2)
    with make_device("emulated-mali:mali-g52:256MiB") as device:
        refused = device.run(LoadJob(checkpoint=str(too_wide), loader="chunked", timeout_s=120))
        parsed = device.run(LoadJob(checkpoint=str(fits), loader="chunked", timeout_s=120))
    assert (refused.status, refused.error_type) == (Status.ERROR, "JobHeaderTooLargeError"), refused.error_message
    assert "a load job takes headers of at most 4 MiB" in (refused.error_message or "")
    assert (parsed.status, parsed.error_type) == (Status.ERROR, "MetadataIncompleteBufferError"), parsed.error_message


def test_a_valid_header_read_entry_by_entry_is_the_full_parse(tmp_path: Path) -> None:
    """The lean reader (header_scan) must accept exactly what the full parse does, and give the same records."""
    from mali_hil.harness.checkpoints.format import parse_header
    from mali_hil.harness.checkpoints.header_scan import read_header

    raw = _wide(tmp_path / "w.safetensors", 1000).read_bytes()[8:-2000]
    assert read_header(raw, "w") == parse_header(raw, "w")
    duplicate = raw.replace(b'"t1":', b'"t0":', 1)
    with pytest.raises(DuplicateKeyError, match="appears twice"):
        read_header(duplicate, "w")
