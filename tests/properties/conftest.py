"""Helpers the property tests share: the one rule for comparing loaded floats with the oracle, and a probe of the
device memory a worker holds between jobs.

The comparison rule (REFERENCE section 5 and the known PoCL fact): values compare by bits, NaN by class and sign
only. Deviations are allowed on one condition only: the loader converts to half with device kernels (it declares
``device_half``) and the device reports ``fp16: emulated``, so tinygrad's emulation of half, not the loader or a
Mali, made the value. Even then only at the edges of fp16, where that emulation is known (measured on tinygrad
0.14 / PoCL 3.1) to go wrong: an fp16 subnormal or the smallest normal comes back as the zero of its sign, the
largest finite value (65504) as the infinity of its sign, a NaN as an infinity. Everything in the normal range
must match, so a loader that truncates or mis-rounds is still caught. Numerics tests xfail on these; tests of
other properties count the tensor as right (its edge values are the numerics property's business).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from mali_hil.emulator.backend import Fp16Fidelity
from mali_hil.harness.devices import Device, DevicePool, DeviceUnavailable
from mali_hil.harness.records.jobs import LoadJob
from mali_hil.harness.records.results import LoadResult, Status, TensorDigest
from mali_hil.harness.values.oracles import expected_digests, expected_tensors

from .hypothesis_profiles import suite_profile

FP16_EXPONENT, FP16_MANTISSA, FP16_SIGN = 0x7C00, 0x03FF, 0x8000
PROBE_TIMEOUT_S = 60.0


def fp16_subnormal(values: np.ndarray) -> np.ndarray:
    """Mask of the float16 values that are subnormal (not zero)."""
    bits = np.ascontiguousarray(values).view(np.uint16)
    return ((bits & FP16_EXPONENT) == 0) & ((bits & FP16_MANTISSA) != 0)


def compare(got: np.ndarray, want: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Element masks (differs, differs exactly as emulated half does: ``want`` an fp16 subnormal, ``got`` the zero
    of its sign). Floats compare by bits, NaN by class and sign; ``got`` and ``want`` have one dtype and shape."""
    assert (got.dtype, got.shape) == (want.dtype, want.shape), f"{got.dtype}{got.shape} != {want.dtype}{want.shape}"
    got, want = np.ascontiguousarray(got).reshape(-1), np.ascontiguousarray(want).reshape(-1)
    if got.dtype.kind != "f" and got.dtype != ml_dtypes.bfloat16:  # bf16 comes back as stored from tinygrad-nn
        return got != want, np.zeros(got.shape, bool)
    uint = f"u{got.itemsize}"
    got_bits, want_bits = got.view(uint), want.view(uint)
    with np.errstate(invalid="ignore"):  # ml_dtypes' bf16 isnan warns on the NaN it is asked about
        sign = np.signbit(got) == np.signbit(want)
        differs = np.where(np.isnan(want), ~(np.isnan(got) & sign), got_bits != want_bits)
    if got.dtype != np.float16:
        return differs, np.zeros(got.shape, bool)
    magnitude = want_bits & ~np.uint16(FP16_SIGN)
    got_zero, got_inf = (got_bits & ~np.uint16(FP16_SIGN)) == 0, np.isinf(got)
    flushed = (fp16_subnormal(want) | (magnitude == 0x0400)) & got_zero & sign  # 0x0400: 2^-14, smallest normal
    overflowed = (magnitude == 0x7BFF) & got_inf & sign  # 65504, the largest finite fp16
    nan_as_inf = np.isnan(want) & got_inf
    return differs, differs & (flushed | overflowed | nan_as_inf)


def emulated_half(result: LoadResult) -> bool:
    """The result's values came from half arithmetic that tinygrad emulated (see the module's docstring)."""
    from mali_hil.harness.loaders import get_loader

    return result.fp16 is Fp16Fidelity.EMULATED and get_loader(result.loader).device_half


def oracle_target(result: LoadResult) -> str:
    """What the oracle converts floats to for ``result``'s loader: float16 (every job's target here), or nothing
    for a loader that keeps floats as stored (tinygrad's own route)."""
    from mali_hil.harness.loaders import get_loader
    from mali_hil.harness.values.oracles import STORED

    return STORED if get_loader(result.loader).keeps_float_dtype else "float16"


def check_values(name: str, got: np.ndarray, want: np.ndarray, result: LoadResult, may_flush: bool = True) -> int:
    """Assert ``got`` is ``want`` value for value; return how many fp16 edge values came back as emulated half
    makes them, which passes only when ``may_flush`` and ``emulated_half(result)``. Bugs this names: truncating
    bf16 instead of rounding, losing -0, overflowing to a finite max instead of inf, quieting NaN to the wrong sign."""
    differs, flushed = compare(got, want)
    allowed = flushed if may_flush and emulated_half(result) else np.zeros_like(flushed)
    wrong = differs & ~allowed
    if wrong.any():
        index = np.flatnonzero(wrong)[:8]
        uint = f"u{want.itemsize}"
        pairs = ", ".join(
            f"{int(w):#x} -> {int(g):#x}"
            for w, g in zip(want.reshape(-1).view(uint)[index], got.reshape(-1).view(uint)[index], strict=True)
        )
        flush_note = f" ({int(allowed.sum())} others are emulated-half edge values)" if allowed.any() else ""
        raise AssertionError(
            f"{result.loader}: {name}: {int(wrong.sum())} of {want.size} values differ from the oracle{flush_note};"
            f" expected -> got bits: {pairs} [{result.fp16.describe()}]"
        )
    return int(flushed.sum())


def check_oracle(result: LoadResult, checkpoint: str | Path, keys: Iterable[str] | None = None,
                 exact: Iterable[str] = ()) -> int:  # fmt: skip
    """Assert ``result`` holds exactly the oracle's tensors (``keys``, default all) with the oracle's digests; a
    tensor whose digest differs passes only by ``check_values`` (so the job must have asked for ``values``), and
    never for the names in ``exact`` (F16 sources: copied, never converted). Returns how many fp16 subnormals were
    flushed, across tensors."""
    assert result.status is Status.OK, failed(result)
    target = oracle_target(result)
    want = oracle_digests(checkpoint, keys, target)
    extra, missing = sorted(set(result.digests) - set(want)), sorted(set(want) - set(result.digests))
    assert not extra and not missing, f"{result.loader} loaded {extra} too and missed {missing}"
    differing = [name for name, digest in want.items() if result.digests[name] != digest]
    for name in differing:  # before any oracle tensor is read whole: a large one may not fit the test's RAM twice
        got, digest = result.digests[name], want[name]
        assert (got.dtype, got.shape, got.nbytes) == (digest.dtype, digest.shape, digest.nbytes), (
            f"{result.loader}: {name} is {got} but the oracle has {digest}"
        )
        assert name in result.values, f"{result.loader}: {name} differs from the oracle: {got} != {digest}"
    exact, flushed = set(exact), 0
    for name, values in expected_tensors(checkpoint, differing, target).items():
        flushed += check_values(name, result.array(name), values, result, may_flush=name not in exact)
    return flushed


#: the oracle's digests by the checkpoint files' content hash, then tensor name: one checkpoint is judged for every
#: loader, and the oracle's streamed conversion of its largest tensors costs far more than hashing the file
_ORACLE_DIGESTS: dict[tuple[str, ...], dict[str, TensorDigest]] = {}
_ORACLE_COMPLETE: set[tuple[str, ...]] = set()  # contents whose every tensor is in _ORACLE_DIGESTS


def oracle_digests(checkpoint: str | Path, keys: Iterable[str] | None = None,
                   target: str = "float16") -> dict[str, TensorDigest]:  # fmt: skip
    """``expected_digests``, remembered for the session by the content of the checkpoint's files (never by name or
    time: a test may write other values into the same path within one clock tick) and the floats' ``target``."""
    from mali_hil.harness.values.oracles import _files

    content = (target, *(_file_hash(path) for path in _files(Path(checkpoint))))
    known = _ORACLE_DIGESTS.setdefault(content, {})
    wanted = None if keys is None else list(dict.fromkeys(keys))
    if content not in _ORACLE_COMPLETE:
        if wanted is None:
            known.update(expected_digests(checkpoint, target_dtype=target))
            _ORACLE_COMPLETE.add(content)
        elif missing := [name for name in wanted if name not in known]:
            known.update(expected_digests(checkpoint, missing, target))
    if wanted is None:
        return dict(known)
    return {name: known[name] for name in wanted if name in known}


def _file_hash(path: Path) -> str:
    import hashlib

    with path.open("rb") as data:
        return hashlib.file_digest(data, "blake2b").hexdigest()


def failed(result: LoadResult) -> str:
    return f"{result.loader}: {result.status.value}: {result.error_type}: {result.error_message}"


@pytest.fixture(scope="session")
def empty_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid checkpoint with no tensors, written by the reference library: a job on it allocates nothing."""
    path = tmp_path_factory.mktemp("probe") / "empty.safetensors"
    save_file({}, str(path))
    return path


def idle_device_bytes(load: Callable[..., LoadResult], empty_checkpoint: Path) -> int | None:
    """Live device bytes between jobs, read by a job on an empty checkpoint (it allocates nothing): its
    ``device_live_before`` is what every earlier job left behind. For a point no job's own figures cover, e.g. after
    a refused checkpoint (whose result carries no device figures). None where no layer counts the device's memory
    (``--device=local``)."""
    probe = load(empty_checkpoint, loader="chunked", timeout_s=PROBE_TIMEOUT_S)
    assert probe.status is Status.OK, f"probe job: {failed(probe)}"
    assert probe.device_peak_bytes == probe.device_live_before, f"an empty job allocated device memory: {probe}"
    return probe.device_live_before


@pytest.fixture(autouse=True)
def _suite_hypothesis_profile(request: pytest.FixtureRequest) -> Iterator[None]:
    """This suite's hypothesis profile, for this suite's tests only (see hypothesis_profiles)."""
    with suite_profile(request.config.getoption("mali_hil_profile")):
        yield


# --- boards of other sizes, for the memory properties (test_memory_bound, test_oom, test_fit) ---


class MeasuredBoards:
    """The boards measured jobs run on, by spec: ``acquire(spec)`` (started), ``restart(spec)``, ``close()``.

    A board that takes one worker at a time (``facts.one_worker``: a physical board, or one leased from labgrid)
    is measured on the session's own device: the same lease and connection, never a second lease of the board (it
    would wait for the first, held by this very run) nor a second worker beside the session's (its RAM would be in
    every measured baseline). Its measured jobs start in a fresh worker whenever a job of the session ran on it
    since the last measured one, so nothing a session job left in its worker reaches a measured baseline; the
    session's next job then starts a worker of its own again only if a measured job left one that was retired.
    Any other board (emulated, here or on a remote machine with a RAM budget of its own) gets a device of its own
    in ``pool``: one warm worker per spec, apart from the session's.
    """

    def __init__(self, session: Any) -> None:
        self.session, self.pool = session, DevicePool()
        self._jobs_after_measured: dict[str, int] = {}  # shared spec -> its device's job count after our last job

    def _shared(self, spec: str) -> Device | None:
        """The session's own device for ``spec`` when it takes one worker at a time, else None."""
        if spec not in self.session.devices:
            return None
        try:
            device = self.session.pool.acquire(self.session.specs.get(spec, spec))
        except DeviceUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)
        return device if device.facts.one_worker else None

    def acquire(self, spec: str) -> Device:
        shared = self._shared(spec)
        if shared is None:
            try:
                return self.pool.acquire(spec)
            except DeviceUnavailable as exc:
                pytest.fail(str(exc), pytrace=False)
        if self._jobs_after_measured.get(spec) != shared.jobs:
            shared.stop()  # a session job ran in this worker: the next measured job starts in a fresh one
        return shared

    def ran(self, spec: str, device: Device) -> None:
        """A measured job ended on ``device``: the next one may reuse its worker unless a session job intervenes."""
        if device.facts.one_worker and spec in self.session.devices:
            self._jobs_after_measured[spec] = device.jobs

    def restart(self, spec: str) -> None:
        shared = self._shared(spec)
        if shared is not None:
            shared.stop()
        else:
            self.pool.release(spec, restart=True)

    def close(self) -> None:
        self.pool.close()  # the session's own devices are the session's to close


class BoardRunner:
    """``run(spec, checkpoint, loader, **job_fields) -> LoadResult`` on a measured board (:class:`MeasuredBoards`),
    recorded for the report as ``load()``'s results are; ``settle(spec)`` runs an empty job after a failed one,
    which checks that the worker is back to an empty device before the next measured job."""

    def __init__(self, boards: MeasuredBoards, session: Any, nodeid: str, empty: Path) -> None:
        self.boards, self._session, self._nodeid, self._empty = boards, session, nodeid, empty

    def __call__(self, spec: str, checkpoint: str | Path, loader: str, **job_fields: Any) -> LoadResult:
        job_fields.setdefault("timeout_s", self._session.job_timeout)
        job = LoadJob(checkpoint=str(Path(checkpoint).resolve()), loader=loader, **job_fields)
        device = self.device(spec)
        result = device.run(job)
        self.boards.ran(spec, device)
        self._session.record(self._nodeid, result)
        return result

    def device(self, spec: str) -> Device:
        """The measured board for ``spec`` (its facts known: started once)."""
        return self.boards.acquire(spec)

    def restart(self, spec: str) -> None:
        """Stop ``spec``'s worker; the next job starts a fresh one (a clean process for a baseline)."""
        self.boards.restart(spec)

    def settle(self, spec: str) -> None:
        probe = self(spec, self._empty, "chunked", timeout_s=PROBE_TIMEOUT_S)
        assert probe.status is Status.OK, f"settling probe on {spec}: {failed(probe)}"


@pytest.fixture(scope="session")
def boards(request: pytest.FixtureRequest) -> Iterator[MeasuredBoards]:
    from mali_hil.harness.plugin.session import SESSION_KEY

    measured = MeasuredBoards(request.config.stash[SESSION_KEY])
    yield measured
    measured.close()


@pytest.fixture
def on_board(request: pytest.FixtureRequest, boards: MeasuredBoards, empty_checkpoint: Path) -> BoardRunner:
    from mali_hil.harness.plugin.session import SESSION_KEY

    return BoardRunner(boards, request.config.stash[SESSION_KEY], request.node.nodeid, empty_checkpoint)


# --- the job past every chunk and window (test_memory_bound and test_numerics judge the same job) ---------------


@pytest.fixture(scope="session")
def past_every_chunk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint of mali_hil.properties.past_chunks: tensors larger than any chunk or window."""
    from mali_hil.harness.checkpoints.cache import cache_key, cached_checkpoint

    from . import past_chunks

    # 156 MB, the same every run: kept between runs and shared by xdist workers, keyed by its generator's source
    key = cache_key("past_every_chunk", {}, sources=[Path(past_chunks.__file__)])
    fallback = tmp_path_factory.mktemp("past-chunks")
    return cached_checkpoint(key, "past-every-chunk.safetensors", past_chunks.write, fallback)


@pytest.fixture(scope="session")
def _past_every_chunk_jobs() -> dict[tuple[str, str], tuple[LoadResult, LoadResult]]:
    return {}


@pytest.fixture
def past_every_chunk_job(on_board: BoardRunner, mali_device: Device, loader_name: str, past_every_chunk: Path,
                         _past_every_chunk_jobs: dict) -> tuple[LoadResult, LoadResult]:  # fmt: skip
    """``(warm, judged)`` jobs of ``past_every_chunk`` at the default chunk, on the measured twin of the session's
    board (checks ``run_twice``; the judged job reads digests back after its memory figures). Run once per device
    and loader, for whichever of its two tests comes first: one load serves both properties."""
    from .checks import run_twice

    key = (mali_device.spec, loader_name)
    if key not in _past_every_chunk_jobs:
        _past_every_chunk_jobs[key] = run_twice(on_board, mali_device.spec, past_every_chunk, loader_name, digests=True)
    return _past_every_chunk_jobs[key]


# --- checkpoints of the dtypes, large-offsets and leaks properties (their wrong loaders' tests use them too) ------


@pytest.fixture(scope="session")
def every_kind_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mali_hil.properties.every_kind: every dtype a loader keeps or converts, 0-d and empty ones, in layers."""
    from . import every_kind

    return every_kind.write(tmp_path_factory.mktemp("every-kind") / "every-kind.safetensors")


@pytest.fixture(scope="session")
def past_4gib_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mali_hil.properties.past_4gib: a sparse 4.3 GB file (a few KiB on disk) with tensors past 2^31 and 2^32."""
    from . import past_4gib

    return past_4gib.write(tmp_path_factory.mktemp("past-4gib") / "past-4gib.safetensors")
