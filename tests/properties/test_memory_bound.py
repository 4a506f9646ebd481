"""Property 2, memory bound: what each variant declares (``Loader.bounds``) holds on the device and in the board's
RAM, and no variant passes a device's cap without reporting ``device-oom``. A variant that declares no bounds (a
plain ``module:function``, or a ``Loader`` without them) is judged against ``default_bound`` instead (one tensor
in flight: mali_hil.harness.loaders.base), and the table says so: it escapes only by declaring its own.

Jobs run on measured twins of the boards (conftest ``on_board``: a worker apart from the session's), so a job's
RAM growth is its own and not hidden by what an earlier job left resident. Each job runs twice and the second is
judged (checks ``run_twice``). The compiler's one-off memory (PoCL's LLVM, tens to ~170 MB) is the device
runtime's, not the loader's, and none of the bounds claims it. The examples skip the digest read-back
(``digests=False``) for time only: it runs after the memory figures are taken and leaves nothing live (measured:
the next job starts at the same live device bytes). The job past every chunk (the last test here) reads its
digests back: the numerics property checks them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mali_hil.harness.loaders import LoadOptions, get_loader

from .checks import MIB, check_judged, run_twice

pytestmark = pytest.mark.mali_hil_property("memory-bound")

SESSION_BOARD = "session"  # the --device of the test (its measured twin when it is emulated)
#: enqueue-error: a buffer past the cap is created and fails only when used, the one profile where a variant could
#: pass the cap without an error. Loads past a cap are test_oom's; every example here fits both boards, with room
#: for a PoCL compile's fork of the worker, whose copy-on-write pages the RAM watchdog counts twice.
SMALL_BOARD = "emulated-mali:mali-t860:1GiB"
#: (model, scale): 0.2-37 MB per two layers in bf16, so an example costs well under a second per job
SHAPES = (("tiny", 1.0), ("llama-3.2-1b", 0.05), ("llama-3-8b", 0.05), ("llama-3.2-1b", 0.1), ("llama-3-8b", 0.1))


@dataclass(frozen=True)
class Case:
    model: str
    scale: float
    layers: int
    dtype: str
    chunk_bytes: int
    shard: tuple[int, int] | None
    board: str
    aligned: bool = True  # the data section at a multiple of 16 bytes, or 8 past one (tinygrad then copies)

    def checkpoint(self, make_checkpoint: Any) -> Any:
        options: dict[str, Any] = {"layers": self.layers, "dtype": self.dtype, "aligned": self.aligned}
        if self.scale != 1.0:
            options["scale"] = self.scale
        return make_checkpoint(self.model, **options)


@st.composite
def cases(draw: Any) -> Case:
    model, scale = draw(st.sampled_from(SHAPES))
    layers = draw(st.integers(1, 4))
    shard = None
    if draw(st.booleans()):
        start = draw(st.integers(0, layers - 1))
        shard = (start, draw(st.integers(start, layers - 1)))
    return Case(
        model=model,
        scale=scale,
        layers=layers,
        dtype=draw(st.sampled_from(["BF16", "F16", "F32"])),
        chunk_bytes=draw(st.sampled_from([64 * MIB, 4 * MIB, 1 * MIB])),
        shard=shard,
        board=draw(st.sampled_from([SESSION_BOARD, SMALL_BOARD])),
        aligned=draw(st.booleans()),
    )


def test_declared_bounds_hold(request, on_board, loader_name: str, mali_device, make_checkpoint) -> None:
    """Each example: a model shape, layer count, source dtype, chunk size, shard range, board, and whether the data
    section starts 16-byte aligned (where it does not, tinygrad copies each source through host memory). Catches: a
    bound formula that forgets a copy (a source kept on the device, a host copy of the file or of an unaligned
    source, a staging buffer, tinygrad's cache keeping a freed buffer); a chunk loop that reads whole tensors;
    buffers allocated per chunk and not freed; a bound computed for the whole model when a shard is loaded; a
    variant that allocates past an enqueue-error cap and returns ok; a device-oom on a load whose declared device
    bound fits the cap; a loader without bounds that holds more than one tensor in flight (every host chunk, the
    whole file)."""
    loader = get_loader(loader_name)
    request.node.user_properties.append(("mali_hil.bounds", loader.bounds_kind))

    # 37 MB in 1-MiB chunks, its data section 8 bytes off 16; an f32 source on a middle node
    @example(case=Case("llama-3-8b", 0.1, 4, "BF16", 1 * MIB, None, SESSION_BOARD, aligned=False))
    @example(case=Case("llama-3.2-1b", 0.1, 3, "F32", 4 * MIB, (1, 2), SMALL_BOARD))
    @given(case=cases())
    def check(case: Case) -> None:
        spec = mali_device.spec if case.board == SESSION_BOARD else case.board
        checkpoint = case.checkpoint(make_checkpoint)
        options = LoadOptions(shard=case.shard, chunk_bytes=case.chunk_bytes)
        warm, result = run_twice(on_board, spec, checkpoint, loader_name, chunk_bytes=case.chunk_bytes,
                                 shard=case.shard)  # fmt: skip
        if result.ok and spec.startswith("emulated-mali"):
            assert result.device_peak_bytes is not None, f"{spec} reported no device counters: is the layer loaded?"
        check_judged(warm, result, loader.bounds_or_default(checkpoint, options))

    check()


def test_bounds_hold_past_the_default_chunk(request, loader_name: str, past_every_chunk, past_every_chunk_job) -> None:
    """The checkpoint past every chunk and window (conftest ``past_every_chunk``) at the default chunk size: the one
    job whose tensors span several 64 MiB chunks, so a bound's whole-chunk terms (a 64 MiB chunk of source and its
    conversion, staging sized by the chunk) meet a real second chunk. Catches: a bound that assumes one chunk per
    tensor; a chunk buffer allocated per chunk and kept; staging sized by the tensor instead of the chunk. The
    same job's values are the numerics property's (test_numerics)."""
    loader = get_loader(loader_name)
    request.node.user_properties.append(("mali_hil.bounds", loader.bounds_kind))
    warm, result = past_every_chunk_job
    check_judged(warm, result, loader.bounds_or_default(past_every_chunk, LoadOptions()))
