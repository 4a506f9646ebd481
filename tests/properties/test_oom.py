"""Property 3, OOM behaviour: a checkpoint that cannot fit a board ends ``device-oom`` or ``oom-killed`` (never
``error``, ``timeout`` or ``ok``); a device-oom states the bytes it needed and those available; and the board
recovers: the next job on the same device loads correctly and ends with the live device bytes it had before.

The over-cap checkpoint is laid out so that the device cap, not the board's RAM, is what a lean loader meets
first (device memory is RAM on Mali, and the budget is only 6-9 % above the cap): four tensors of 47.5 MB
(fp16) fill 190 MB of the cap, then a 62.3 MB head (under the smallest max alloc, 62.85 MB) crosses it while
the worker holds ~190 MB + its baseline (~45 MB), below the 268 MB budget. So chunked with 1 MiB chunks meets
each profile's own failure: a refused allocation (alloc-error, Mali-G52), a failing enqueue on an overcommitted
buffer (enqueue-error, Mali-T860), the OOM killer once the board's RAM, device buffers included, runs out
(oom-kill, Mali-G610: libmali caps nothing below RAM, so the load passes the budget, which on that board is what it
leaves a job, 234 MiB, and may end before the head). Variants that hold more in RAM may be killed for RAM first,
which is as much a correct outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mali_hil.emulator.emulated_board import EmulatedBoard
from mali_hil.emulator.profile import OomTrigger, load_profile
from mali_hil.harness.checkpoints import TensorSpec, make_fill, validate_checkpoint, write_safetensors
from mali_hil.harness.loaders import LoadOptions, bound_inputs
from mali_hil.harness.records.results import LoadResult, Status
from mali_hil.runtime.verdict import OomEvidence

from .checks import MIB, check_oom, check_recovered, oom_figures

pytestmark = pytest.mark.mali_hil_property("oom")

#: failure mode -> a 256 MiB board of a profile that fails that way
MODE_BOARDS = {
    "alloc-error": "emulated-mali:mali-g52:256MiB",
    "enqueue-error": "emulated-mali:mali-t860:256MiB",
    "oom-kill": "emulated-mali:mali-g610:256MiB",
}
EVERY_VARIANT_BOARD = MODE_BOARDS["alloc-error"]
CHUNK_BYTES = 1 * MIB
LAYER_SHAPE, HEAD_SHAPE = (5800, 4096), (7600, 4096)  # bf16 in the file, fp16 on the device
LAYER_BYTES, HEAD_BYTES = 5800 * 4096 * 2, 7600 * 4096 * 2
WORKER_BASELINE = 64 * MIB  # measured: ~43 MB fresh (python, tinygrad, PoCL), up to ~61 MB after some jobs


@pytest.fixture(scope="session")
def over_cap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """252 MB of bf16 weights (fp16 on the device) laid out as the module docstring explains; constant fill."""
    from mali_hil.harness.checkpoints.cache import cache_key, cached_checkpoint

    specs = [TensorSpec(f"model.layers.{i}.mlp.up_proj.weight", "BF16", LAYER_SHAPE) for i in range(4)]
    specs.append(TensorSpec("lm_head.weight", "BF16", HEAD_SHAPE))

    def write(path: Path) -> Path:
        write_safetensors(path, specs, make_fill("constant"), {"format": "pt"})
        return path

    # the same 252 MB every run: kept between runs and shared by xdist workers, keyed by this module's source
    key = cache_key("over_cap", {"specs": [repr(spec) for spec in specs]}, sources=[Path(__file__)])
    path = cached_checkpoint(key, "over-cap.safetensors", write, tmp_path_factory.mktemp("oom"))
    inputs = bound_inputs(validate_checkpoint(path), LoadOptions(chunk_bytes=CHUNK_BYTES))
    for spec in MODE_BOARDS.values():  # the layout's premises, so that a profile edit cannot void them silently
        board = EmulatedBoard.from_spec(spec.partition(":")[2])
        cap, max_alloc = board.profile.global_mem, board.profile.max_alloc
        assert inputs.final_bytes > cap, f"{spec}: the checkpoint fits the {cap}-byte cap"
        assert inputs.largest_final_bytes <= max_alloc or board.profile.over_max_alloc == "accept", spec
        assert inputs.final_bytes - HEAD_BYTES < cap, f"{spec}: the cap is crossed before the last tensor"
        if board.profile.oom_trigger is OomTrigger.BOTH:  # a driver that fails at the cap must meet it before RAM ends
            assert inputs.final_bytes - HEAD_BYTES + WORKER_BASELINE < board.ram_budget, f"{spec}: RAM runs out first"
    return path


def _before_and_after(on_board, spec: str, loader: str, small: Path, big: Path) -> tuple[LoadResult, LoadResult,
                                                                                          LoadResult]:  # fmt: skip
    """(the small job before, the big job, the same small job after) on one board, in a fresh worker (what earlier
    jobs left in a warm one counts against the board's RAM). The reference runs second and without the digest
    read-back, so that nothing of an earlier job is live when the big one starts (mali_hil.harness.worker's digest loop
    keeps the last tensor past the job's cleanup)."""
    on_board.restart(spec)
    on_board(spec, small, loader)
    reference = on_board(spec, small, loader, digests=False)
    assert reference.ok, f"the small job must load before the big one: {reference.error_message}"
    result = on_board(spec, big, loader, chunk_bytes=CHUNK_BYTES)
    after = on_board(spec, small, loader, values=True)
    return reference, result, after


def _all(*checks: Callable[[], None]) -> None:
    """Run every check and fail with all their messages: a wrong OOM report and a failed recovery are two bugs."""
    problems = []
    for check in checks:
        try:
            check()
        except AssertionError as exc:
            problems.append(str(exc))
    assert not problems, "\n".join(problems)


def test_every_variant_runs_out_cleanly(on_board, loader_name: str, make_checkpoint, over_cap: Path) -> None:
    """alloc-error board (Mali-G52, 256 MiB), every variant. Catches: an allocation failure that surfaces as
    ``error`` (an exception type the worker does not recognise, a retry that hangs into ``timeout``); a device-oom
    without the figures a user needs; the failed job's tensors still held by the next job (its live device bytes
    grow, or it fails); a worker that cannot serve after an OOM kill."""
    small = make_checkpoint("tiny")
    reference, result, after = _before_and_after(on_board, EVERY_VARIANT_BOARD, loader_name, small, over_cap)
    _all(lambda: check_oom(result), lambda: check_recovered(after, reference, small))


@pytest.mark.parametrize("mode", sorted(MODE_BOARDS))
def test_profile_failure_mode(on_board, make_checkpoint, over_cap: Path, mode: str) -> None:
    """chunked, whose RAM is its device buffers plus one 1 MiB chunk, meets each profile's device failure itself
    (not the RAM watchdog): the mode's status, its error, and (for device-oom) the figures. Catches: the layer
    failing the wrong way for a profile, the worker misclassifying the enqueue error (``error`` instead of
    ``device-oom``), an OOM kill by the layer reported as a plain death, and each mode's recovery."""
    spec = MODE_BOARDS[mode]
    profile = load_profile(spec.partition(":")[2])
    assert profile.oom_failure.value == mode, f"{spec} fails by {profile.oom_failure.value}, not {mode}"
    small = make_checkpoint("tiny")
    reference, result, after = _before_and_after(on_board, spec, "chunked", small, over_cap)
    _all(lambda: _check_mode(mode, profile, result), lambda: check_recovered(after, reference, small))


def _check_mode(mode: str, profile: Any, result: LoadResult) -> None:
    check_oom(result)
    if mode == "oom-kill" and profile.oom_trigger is OomTrigger.RAM:
        assert result.status is Status.OOM_KILLED, result.error_message
        # the budget's kill: by the watchdog, or after the fact where the worker's meter saw what it missed
        assert result.oom_evidence in (OomEvidence.ENFORCER, OomEvidence.METER), (
            f"expected the RAM budget's kill: {result.error_message}"
        )
        return
    if mode == "oom-kill":
        assert result.status is Status.OOM_KILLED, result.error_message
        assert "device's OOM behaviour" in (result.error_message or ""), (
            f"expected the layer's kill at the cap, not the RAM budget's: {result.error_message}"
        )
        assert result.oom_evidence is OomEvidence.LAYER, result.oom_evidence
        assert result.device_failed_allocations, "the layer's last counters are in the killed job's record"
        return
    assert result.status is Status.DEVICE_OOM, f"{mode}: {result.status.value}: {result.error_message}"
    if mode == "alloc-error":
        assert result.error_type == "MemoryError" and result.device_failed_allocations, result.error_message
    else:
        assert profile.oom_error in (result.error_message or ""), f"expected {profile.oom_error}: {result}"
    needed, available = oom_figures(result.error_message) or (0, 0)
    assert needed == HEAD_BYTES, f"the {HEAD_BYTES}-byte head crosses the cap; the message says {needed} bytes needed"
    assert available == (result.device_cap_bytes or 0) - 4 * LAYER_BYTES, (
        f"four {LAYER_BYTES}-byte tensors were live when the head was refused; the message says {available} available"
    )
