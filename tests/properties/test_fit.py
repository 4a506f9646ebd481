"""Property 4, fit prediction: from a board's profile and a checkpoint, each variant's declared bounds predict
whether it loads (``mali_hil.harness.sizing.predict.predict_fit``: device bound <= cap and baseline + RAM bound <=
budget), and
the load agrees: ``ok`` when predicted to fit, ``device-oom`` or ``oom-killed`` when not.

How the numbers are made comparable:
- the baseline is measured once per variant, from a tiny job of that variant (after a first tiny job filled the
  disk caches); every job runs in a fresh process, so a first kernel's cost is in each job and in the converting
  variants' declared bounds (``FIRST_KERNELS_RAM``, mali_hil.harness.loaders.base);
- the board holds the worker beside the job's process, which copies part of the worker's pages as its Python
  writes to them, up to all of them (``LoadResult.board_baseline_bytes``): a fit is predicted with all of them
  copied and must then load, a failure with none of them copied and must then run out; between the two, the
  example says nothing and is skipped;
- bounds are upper bounds and the RAM watchdog samples, so a prediction near a limit says little: examples
  within ``CLEAR_CUT`` of either limit (as a share of it) are skipped with ``assume``. 10 % is about what the
  measured peaks scatter around the formulas of the tight variants here (chunked, mmap: within 2 %), plus the
  watchdog's overshoot before it kills (a few MB on a 256 MiB board);
- each checkpoint's kernels are compiled first on a large twin of the board (same profile, same disk caches), so
  the fit job compiles nothing. Compiling on PoCL costs 50-160 MB in-process (LLVM) and forks the worker to
  link: that is the emulator's cost, not a Mali driver's (whose compiler is not in the loader's bounds either).

A variant that declares no bounds is predicted from ``default_bound`` (mali_hil.harness.loaders.base) and held to
one direction: where the default predicts a fit, it must load. Where it predicts none, a leaner loader may still
load: the default is a ceiling the loader must stay under, not its own claim of what it needs.
"""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from mali_hil.harness.loaders import LoadOptions, get_loader
from mali_hil.harness.records.results import Status
from mali_hil.harness.sizing.predict import predict_fit

from .checks import MIB
from .conftest import failed

pytestmark = pytest.mark.mali_hil_property("fit")

FIT_BOARD = "emulated-mali:mali-g610:256MiB"  # oom-kill profile; max alloc == global memory, so only totals count
COMPILE_BOARD = "emulated-mali:mali-g610:3GiB"  # same profile, room for any compile
CLEAR_CUT = 0.10
CHUNK_BYTES = 4 * MIB
#: (model, scale, layers): 30-240 MB of bf16, from "every variant fits" to "none does" on the 256 MiB board
GRID = (
    ("llama-3-8b", 0.1, 2),
    ("llama-3-8b", 0.1, 4),
    ("llama-3.2-1b", 0.25, 4),
    ("llama-3-8b", 0.15, 4),
    ("llama-3-8b", 0.2, 2),
    ("llama-3.2-1b", 0.4, 2),
    ("llama-3-8b", 0.25, 2),
    ("llama-3-8b", 0.25, 4),
)


def test_bounds_predict_fit(request, on_board, loader_name: str, make_checkpoint) -> None:
    """Catches: a RAM bound that forgets a host copy (a variant killed where its bound fits), a bound that
    overstates so much that it refuses loads that fit, a device-oom classified as an error, a worker that keeps
    memory between jobs (its baseline creeps up and loads predicted to fit are killed); a loader without bounds
    killed where the default bound fits."""
    loader = get_loader(loader_name)
    request.node.user_properties.append(("mali_hil.bounds", loader.bounds_kind))
    facts = on_board.device(FIT_BOARD).facts
    cap, budget = facts.cap_bytes, facts.ram_budget_bytes
    assert cap is not None and budget is not None, f"{FIT_BOARD} states no cap or budget: {facts}"
    tiny = make_checkpoint("tiny")
    on_board.restart(FIT_BOARD)
    on_board(FIT_BOARD, tiny, loader_name, digests=False)  # the variant's one-off start costs
    probe = on_board(FIT_BOARD, tiny, loader_name, digests=False)
    assert probe.ok and probe.ram_baseline_bytes is not None, failed(probe)
    # the board holds the worker beside the job's process, which copies some of the worker's pages, up to all
    least, most = probe.ram_baseline_bytes, probe.board_baseline_bytes
    assert most is not None

    @given(shape=st.sampled_from(GRID))
    def check(shape: tuple[str, float, int]) -> None:
        model, scale, layers = shape
        checkpoint = make_checkpoint(model, scale=scale, layers=layers, fill="constant")
        options = LoadOptions(chunk_bytes=CHUNK_BYTES)
        bounds = loader.bounds_or_default(checkpoint, options)
        sure = predict_fit((bounds.device, bounds.ram), cap=cap, budget=budget, baseline=most)
        hopeful = predict_fit((bounds.device, bounds.ram), cap=cap, budget=budget, baseline=least)
        assert sure is not None and hopeful is not None
        assume(sure.fits or not hopeful.fits)  # between the two, whether it fits is the worker's pages' to say
        prediction = sure if sure.fits else hopeful
        assume(abs(prediction.margin) >= CLEAR_CUT)
        assume(prediction.fits or not bounds.defaulted)  # where the default does not fit, it claims nothing
        compiled = on_board(COMPILE_BOARD, make_checkpoint(model, scale=scale, layers=1, fill="constant"),
                            loader_name, chunk_bytes=CHUNK_BYTES, digests=False)  # fmt: skip
        assert compiled.ok, f"compiling on {COMPILE_BOARD}: {failed(compiled)}"
        result = on_board(FIT_BOARD, checkpoint, loader_name, chunk_bytes=CHUNK_BYTES, digests=False)
        assert result.status in (Status.OK, Status.DEVICE_OOM, Status.OOM_KILLED), failed(result)
        if not result.ok:
            on_board.settle(FIT_BOARD)
        if result.ok != prediction.fits:
            drift = "" if result.ram_baseline_bytes is None else (
                f"; this job started at a baseline of {result.ram_baseline_bytes} bytes, the variant's measured"
                f" baseline is {least} (with the worker {most})")  # fmt: skip
            peak = result.peak_unified_bytes
            raise AssertionError(
                f"{loader_name} on {FIT_BOARD}, {model}@{scale}x{layers}: {prediction.describe()} by"
                f" {bounds.source('device')} and {bounds.source('RAM')}, but the job ended"
                f" {result.status.value} (unified RAM peak {peak}, device peak {result.device_peak_bytes}){drift}:"
                f" {result.error_message or ''}"
            )

    check()
