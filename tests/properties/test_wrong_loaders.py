"""Each deliberately wrong loader of wrong_loaders.py is caught by the check of the property meant for it, and the
same check passes for a correct built-in (chunked) on the same job.

The checks are the properties' own functions: conftest ``check_oracle`` (numerics, and the value side of the
others), test_corrupt_input's judge, and checks.py's functions for idempotence, shards and memory-bound (the
first two mirror the assertions test_idempotence.py / test_shards.py keep inline). Where the wrong loader is a
plain function, so is the correct one (``streaming``): both are judged by the same default bound. Each
``pytest.raises`` also matches the message, so a check that fails for another reason (a job error, a measurement
glitch) does not count as catching the bug. The wrong loaders run in the session's worker (hoarding on its
measured twin, as memory-bound runs every loader), imported by ``module:function``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from mali_hil.harness.checkpoints import get_model
from mali_hil.harness.loaders import LoadOptions, get_loader
from mali_hil.harness.loaders.base import JudgedBounds
from mali_hil.harness.records.results import LoadResult

from . import every_kind
from .checks import MIB, check_judged, check_memory_bound, check_node, check_same_job_twice, run_twice
from .conftest import check_oracle, idle_device_bytes
from .test_corrupt_input import NAMED, _apply, _judge
from .test_large_offsets import IN_PLACE_KINDS, SHARD, check_past_4gib
from .test_leaks import check_no_leak

# by its installed name, which every worker can import (a checkout's editable install, a wheel, a board's venv),
# whatever name pytest gave this module when it collected the suite
WRONG = "mali_hil.properties.wrong_loaders:"


def _with_loader(load: Any, name: str) -> Any:
    """``load`` whose default loader is ``name`` (the judge runs the job with the default; its probes name theirs)."""

    def run(checkpoint: str | Path, loader: str | None = None, **job: Any) -> LoadResult:
        return load(checkpoint, loader=loader or name, **job)

    return run


def _settled_idle(load: Any, empty_checkpoint: Path) -> int | None:
    """Idle device bytes from a second probe: the first frees what the previous job left in tinygrad's cache."""
    idle_device_bytes(load, empty_checkpoint)
    return idle_device_bytes(load, empty_checkpoint)


@pytest.mark.mali_hil_property("numerics")
def test_truncation_is_caught_by_numerics(load, tmp_path: Path) -> None:
    """Every bf16 bit pattern; truncating instead of rounding differs on about half of them."""
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).reshape(256, 256)
    path = tmp_path / "all-bf16.safetensors"
    save_file({"w": bits.view(ml_dtypes.bfloat16)}, str(path))
    wrong = load(path, loader=WRONG + "truncating", values=True)
    with pytest.raises(AssertionError, match="values differ from the oracle"):
        check_oracle(wrong, path)
    check_oracle(load(path, loader="chunked", values=True), path)


@pytest.mark.mali_hil_property("numerics")
def test_short_tail_is_caught_by_digests(load, make_checkpoint) -> None:
    """Chunks of 4 KiB cut the tiny model's big tensors into several (the embedding and head into 8): their last
    chunk is never written. The wrong loader runs first, so no buffer of the right values is in any cache yet."""
    checkpoint = make_checkpoint("tiny")
    wrong = load(checkpoint, loader=WRONG + "short_tail", chunk_bytes=4096, values=True)
    with pytest.raises(AssertionError, match="differ from the oracle"):
        check_oracle(wrong, checkpoint)
    check_oracle(load(checkpoint, loader="chunked", chunk_bytes=4096, values=True), checkpoint)


@pytest.mark.mali_hil_property("numerics")
def test_fixed_window_and_lost_last_chunk_are_caught_past_every_chunk(load, past_every_chunk: Path) -> None:
    """The checkpoint past every chunk (conftest ``past_every_chunk``) at the default 64 MiB chunk: a fixed 16 MiB
    conversion buffer writes a quarter of each full chunk, and short_tail never writes the second chunk of the
    66 MiB tensors. Every other numerics test loads tensors of at most 3 MB, which both load correctly. The
    wrong loaders run first, so no buffer of the right values is in any cache yet."""
    for wrong in ("fixed_window", "short_tail"):
        result = load(past_every_chunk, loader=WRONG + wrong)
        with pytest.raises(AssertionError, match=r"past_chunk\.bf16 differs from the oracle"):
            check_oracle(result, past_every_chunk)
    check_oracle(load(past_every_chunk, loader=WRONG + "streaming"), past_every_chunk)


@pytest.mark.mali_hil_property("memory-bound")
def test_hoarding_is_caught_by_the_default_bound(on_board, mali_device, make_checkpoint) -> None:
    """hoarding declares no bounds, so memory-bound judges it by the default (final bytes plus one tensor in
    flight): 39 MB of final weights plus the 10.7 MB head as read and as converted, 60.5 MB. Keeping every
    converted host chunk puts the weights in RAM twice (79 MB measured); streaming, the same code without the
    hoard, grew 45 MB. Memory-bound's own protocol and verdict: run twice on the measured twin, the second judged."""
    checkpoint = make_checkpoint("llama-3-8b", scale=0.1, layers=4)
    options = LoadOptions(chunk_bytes=4 * MIB)

    def judged(loader: str) -> None:
        warm, result = run_twice(on_board, mali_device.spec, checkpoint, loader, chunk_bytes=options.chunk_bytes)
        bounds = get_loader(loader).bounds_or_default(checkpoint, options)
        assert bounds.defaulted == ("device", "RAM"), bounds
        if result.ram_growth_bytes is None:
            pytest.skip(f"{result.device}: its RAM is not measured, so a hoard cannot show")
        check_judged(warm, result, bounds)

    with pytest.raises(AssertionError, match="over the default RAM bound"):
        judged(WRONG + "hoarding")
    judged(WRONG + "streaming")


@pytest.mark.mali_hil_property("idempotence")
def test_leak_is_caught_by_idempotence(load, mali_device, make_checkpoint, empty_checkpoint: Path) -> None:
    """The same job twice: the leaky loader ends the second with 1 MiB more live device memory than the first. The
    worker is stopped afterwards (the next job starts a new one), so its leak does not reach later tests."""
    checkpoint = make_checkpoint("tiny", fill="special")

    def twice(loader: str) -> tuple[LoadResult, LoadResult, int | None]:
        _settled_idle(load, empty_checkpoint)
        first, second = load(checkpoint, loader=loader), load(checkpoint, loader=loader)
        return first, second, _settled_idle(load, empty_checkpoint)

    try:
        wrong = twice(WRONG + "leaky")
        if wrong[2] is None:
            pytest.skip(f"{mali_device.spec}: no layer counts this device's memory, so a leak cannot show")
        with pytest.raises(AssertionError, match="held elsewhere"):
            check_same_job_twice(*wrong)
    finally:
        mali_device.stop()
    assert check_same_job_twice(*twice("chunked"))


@pytest.mark.mali_hil_property("shards")
def test_ignored_shard_is_caught_by_shards(load, make_checkpoint) -> None:
    """The middle node of a 4-layer model (layers 1-2) must not load the embedding, the other layers or the head."""
    checkpoint = make_checkpoint("tiny", layers=4)
    config = get_model("tiny").scaled(1.0, layers=4)
    wrong = load(checkpoint, loader=WRONG + "whole_model", shard=(1, 2), values=True)
    with pytest.raises(AssertionError, match="it should not"):
        check_node(wrong, checkpoint, config, 1, 2)
    check_node(load(checkpoint, shard=(1, 2), loader="chunked", values=True), checkpoint, config, 1, 2)


@pytest.mark.mali_hil_property("memory-bound")
def test_understated_bound_is_caught_by_memory_bound(load, make_checkpoint) -> None:
    """fix_bf16-device keeps each bf16 source beside its fp16 result on the device; declaring chunked's bound
    (final bytes) understates that. The same load code with its true declaration (fix_bf16-device) passes, as does
    chunked. Each job runs twice and the second is judged (memory-bound's protocol: the first compiles kernels
    and settles what the previous test left in the worker)."""
    checkpoint = make_checkpoint("llama-3-8b", scale=0.05, layers=2)

    def judged(loader: str) -> tuple[LoadResult, JudgedBounds]:
        load(checkpoint, loader=loader, digests=False)
        bounds = get_loader(loader).bounds_or_default(checkpoint, LoadOptions())
        return load(checkpoint, loader=loader, digests=False), bounds

    result, bounds = judged(WRONG + "understated")
    if result.device_peak_bytes is None:
        pytest.skip(f"{result.device}: no layer counts this device's memory, so its peak cannot be judged")
    with pytest.raises(AssertionError, match="over its declared device bound"):
        check_memory_bound(result, bounds)
    for loader in ("fix_bf16-device", "chunked"):
        result, bounds = judged(loader)
        check_memory_bound(result, bounds)


@pytest.mark.mali_hil_property("corrupt-input")
def test_header_order_is_caught_by_corrupt_input(load, tmp_path: Path, empty_checkpoint: Path) -> None:
    """corrupt-input's named case "offsets-swapped": a valid file whose data is not in header order. A loader that
    reads the header with plain json and ignores ``data_offsets`` returns another tensor's bytes."""
    mutations = {case[0]: case[1] for case in NAMED}["offsets-swapped"]
    path = tmp_path / "offsets-swapped.safetensors"
    path.write_bytes(_apply(mutations))
    idle = _settled_idle(load, empty_checkpoint)
    with pytest.raises(AssertionError, match=r"differ from the oracle|other tensors than the oracle"):
        _judge(_with_loader(load, WRONG + "header_order"), path, idle, empty_checkpoint)
    _judge(_with_loader(load, "chunked"), path, idle, empty_checkpoint)


@pytest.mark.mali_hil_property("corrupt-input")
def test_corrupt_file_never_reaches_a_loader(load, tmp_path: Path, empty_checkpoint: Path) -> None:
    """Why the corrupt-input case above is a valid file: the worker validates every checkpoint before any loader
    runs, so even the loader that skips validation gets no corrupt file; corrupt-input's judge passes for it (the
    job ends ``error`` with the CheckpointError, and the device never sees it). Fails if the worker stops
    validating first."""
    path = tmp_path / "offset-gap.safetensors"
    path.write_bytes(_apply({case[0]: case[1] for case in NAMED}["offset-gap"]))
    idle = _settled_idle(load, empty_checkpoint)
    result = _judge(_with_loader(load, WRONG + "header_order"), path, idle, empty_checkpoint)
    assert result.error_type == "InvalidOffsetError", result


@pytest.mark.mali_hil_property("dtypes")
@pytest.mark.parametrize(
    ("wrong", "says"),
    [
        ("narrowing", r"LoaderContractError: 32 tensors .*: model\.\S+\.(u|i)64_\w+ is (U|I)32\[.*\], not (U|I)64"),
        ("scalars_as_vectors", r"LoaderContractError: 48 tensors .*_scalar is [A-Z0-9]+\[1\], not [A-Z0-9]+\[\]"),
        ("bool_as_float", r"LoaderContractError: 16 tensors .*\.bool_\w+ is F16\[.*\], not BOOL\["),
        ("empty_dropped", r"loaded \[\] too and missed \['model\.extra\.bf16_empty'"),
    ],
)
def test_wrong_kinds_are_caught_by_dtypes(load, every_kind_checkpoint: Path, wrong: str, says: str) -> None:
    """dtypes' own check on the every-kind file: a narrowed I64, a 0-d scalar reshaped to (1,) and a BOOL mask
    converted like a float are refused by the worker's contract check (the job is an error naming the tensor), an
    empty tensor dropped is missed against the oracle. The same code without the bug passes."""
    result = load(every_kind_checkpoint, loader=WRONG + wrong, values=True)
    with pytest.raises(AssertionError, match=says):
        check_oracle(result, every_kind_checkpoint)
    check_oracle(load(every_kind_checkpoint, loader=WRONG + "streaming", values=True), every_kind_checkpoint)


@pytest.mark.mali_hil_property("large-offsets")
def test_32bit_offsets_are_caught_past_4gib(load, mali_device, past_4gib_checkpoint: Path) -> None:
    """The sparse file's tensors past 2^32 bytes are read at their offset modulo 2^32, inside layer 0's first hole:
    zeros, not their values. Those past 2^31 (below 2^32) still load right, so only the last ones are named."""
    if mali_device.facts.kind not in IN_PLACE_KINDS:
        pytest.skip(f"{mali_device.spec} would copy the 4.3 GB file to the board")
    with pytest.raises(AssertionError, match=r"tensors past 2\^31/2\^32 bytes differ .*past_4gib"):
        check_past_4gib(load(past_4gib_checkpoint, loader=WRONG + "offsets_32bit", shard=SHARD), past_4gib_checkpoint)
    check_past_4gib(load(past_4gib_checkpoint, loader=WRONG + "streaming", shard=SHARD), past_4gib_checkpoint)


@pytest.mark.mali_hil_property("leaks")
def test_descriptor_per_tensor_is_caught_by_leaks(load, mali_device, every_kind_checkpoint: Path) -> None:
    """A descriptor of the file opened per tensor and never closed: 192 of them after one job, named on that job.
    Its worker is retired, so the next job runs in a fresh one (one more worker start) and finds nothing open."""
    wrong = load(every_kind_checkpoint, loader=WRONG + "descriptor_per_tensor")
    assert wrong.ok, wrong
    with pytest.raises(AssertionError, match=rf"descriptor_per_tensor left open .*: {len(every_kind.tensors())} "
                                             "descriptors"):  # fmt: skip
        check_no_leak(wrong)
    starts = mali_device.starts
    correct = load(every_kind_checkpoint, loader=WRONG + "streaming")
    check_no_leak(correct)
    assert mali_device.starts == starts + 1, "the worker whose job leaked served the next job"
