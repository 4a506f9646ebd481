"""The device-side worker: runs load jobs in its own process, so an OOM kill or a driver crash can't take the
test process down. It speaks :mod:`mali_hil.harness.worker.protocol` on stdin and on the process's original
stdout (everything the loaders print is sent to stderr instead), whatever transport carries it. A warm worker
serves many jobs; between jobs it drops every tensor and tinygrad's buffer cache, so each job starts from the
same baseline.

When told to emulate (``MALI_HIL_EMULATE=PROFILE[:RAM]``), the worker puts itself on that emulated Mali before
its first OpenCL call, on whatever machine it runs: the OpenCL layer is built and configured there.
"""

from __future__ import annotations

import base64
import gc
import json
import os
import sys
import time
import traceback
from typing import IO, Any

from mali_hil.emulator.backend import Fp16Fidelity
from mali_hil.errors import MaliHilError
from mali_hil.harness.records.jobs import LoadJob
from mali_hil.harness.records.results import LoadResult, TensorDigest
from mali_hil.harness.values.digest import Digest
from mali_hil.harness.worker.leaks import Holdings
from mali_hil.harness.worker.protocol import BACKEND_ENV, EMULATE_ENV, LOADER_PATH_ENV, PROTOCOL
from mali_hil.runtime.meter import MemoryMeter
from mali_hil.runtime.verdict import Claim, Evidence, Status, capped, decide, layer_fields, meter_fields

DEVICE = "CL"
_DIGEST_CHUNK = 16 << 20
_VALUES_LIMIT = 4 << 20  # values travel as base64 JSON: fine for test tensors, not for weights


def _layer_stats() -> Any | None:
    """The layer's counters, or None where no layer sits in front of the device (`--device=local`). On an
    emulated board the layer was checked at the worker's start, so counters that cannot be read now are raised
    (the job is then an ``infra-error``), never dropped: a job without its device figures would pass as one on a
    device nobody measures."""
    from mali_hil.runtime.layer_stats import read_layer_stats

    try:
        return read_layer_stats()
    except MaliHilError:
        if os.environ.get(EMULATE_ENV):
            raise
        return None


def _put_on_board() -> tuple[str, Any]:
    """Put this process on the emulated Mali it was told to emulate, if any; returns the backend's description
    and the board (None when the device is the machine's own)."""
    spec = os.environ.get(EMULATE_ENV)
    if not spec:
        return os.environ.get(BACKEND_ENV, ""), None
    from mali_hil.emulator.emulated_board import EmulatedBoard

    if not os.environ.get(BACKEND_ENV):  # ask before the layer is in: then it answers as the Mali
        from mali_hil.harness.transports.local import backend_description

        os.environ[BACKEND_ENV] = backend_description()
    board = EmulatedBoard.from_spec(spec)
    board.activate()
    return os.environ[BACKEND_ENV], board


def _check_on_board(board: Any, facts: dict[str, str]) -> None:
    """The device this process got must be the emulated Mali it asked for: a layer that did not load (a broken
    or empty .so), or that refused its config, leaves plain PoCL with no cap and no Mali identity, and every
    verdict would then be wrong while looking fine. Raises BackendError saying which."""
    from mali_hil.errors import BackendError
    from mali_hil.runtime.layer_stats import read_layer_stats

    try:
        stats = read_layer_stats()
    except BackendError as exc:
        raise BackendError(f"the emulated {board.profile.spec} is not in front of the device: {exc}") from None
    wanted = (board.profile.name, board.profile.global_mem)
    if (facts["device_name"], stats.cap_bytes) != wanted:
        raise BackendError(
            f"the emulated {board.profile.spec} is not configured as asked: the device is "
            f"{facts['device_name']!r} with a {stats.cap_bytes}-byte cap, not {wanted[0]!r} with {wanted[1]}"
        )


def _backend_facts(backend: str) -> dict[str, str]:
    from tinygrad import Device

    dev = Device[DEVICE]
    fp16 = Fp16Fidelity.NATIVE if "cl_khr_fp16" in dev.device_exts else Fp16Fidelity.EMULATED
    return {"device_name": dev.device_name, "fp16": fp16.value, "backend": backend}


def _digest(tensor: Any, keep: list[bytes] | None = None) -> TensorDigest:
    """Read a device tensor back in bounded chunks and digest it (runs after the job's memory was measured).
    With ``keep``, the bytes are also appended there (for jobs that asked for values)."""
    import numpy as np
    from tinygrad.dtype import _to_np_dtype
    from tinygrad.nn.state import inverse_safe_dtypes

    from mali_hil.harness.checkpoints import numpy_dtype
    from mali_hil.harness.loaders._device import read_at
    from mali_hil.harness.loaders.base import LoaderError

    # as stored on the device: numpy's own name for tinygrad's bf16 would be float32 (what .numpy() converts to)
    stored = inverse_safe_dtypes.get(tensor.dtype)
    np_dtype = np.dtype(numpy_dtype(stored) if stored else _to_np_dtype(tensor.dtype))
    digest = Digest()
    try:
        step = max(1, _DIGEST_CHUNK // np_dtype.itemsize) * np_dtype.itemsize
        total = tensor.numel() * np_dtype.itemsize
        for offset in range(0, total, step):
            chunk = np.empty(min(step, total - offset) // np_dtype.itemsize, dtype=np_dtype)
            digest.update(read_at(tensor, offset, chunk))
            if keep is not None:
                keep.append(chunk.tobytes())
    except LoaderError:  # a view, not a whole buffer (a user's loader may return one): read it whole
        digest, whole = Digest(), tensor.numpy().reshape(-1)
        digest.update(whole)
        if keep is not None:
            keep[:] = [whole.tobytes()]
    return TensorDigest(np_dtype.name, tuple(tensor.shape), digest.hexdigest(), digest.nbytes)


def run_job(job: LoadJob, facts: dict[str, str]) -> LoadResult:
    """Run one job in this process and describe it; never raises for anything the loader does."""
    from tinygrad import Device
    from tinygrad.helpers import Context

    from mali_hil.harness.checkpoints import validate_checkpoint
    from mali_hil.harness.checkpoints.validate import JOB_HEADER_LIMIT
    from mali_hil.harness.loaders import LoadOptions, get_loader

    base: dict[str, Any] = {
        "loader": job.loader,
        "device": facts["device_name"],
        "checkpoint": job.checkpoint,
        "shard": job.shard,
        "lru_cache": job.lru,
        "fp16": facts["fp16"],
        "backend": facts["backend"],
    }
    started = time.monotonic()
    before = _layer_stats()
    if before is not None:  # a layer counts this device: this job's peak and event counters start here
        from mali_hil.runtime.layer_stats import reset_layer_stats

        reset_layer_stats()
    try:
        loader = get_loader(job.loader)
        # before any device allocation; a header too large to parse within a board's RAM is the checkpoint's
        # fault, refused here from its 8-byte prefix, not an OOM kill blamed on the loader
        checkpoint = validate_checkpoint(job.checkpoint, JOB_HEADER_LIMIT)
        options = LoadOptions(
            shard=job.shard, chunk_bytes=job.chunk_bytes, target_dtype=job.target_dtype, keep=job.keep
        )
    except MaliHilError as exc:
        verdict = decide(Evidence(claim=Claim.of(exc)))  # refused before the loader ran: its checkpoint's fault
        return LoadResult(verdict.status, error_type=verdict.error_type, error_message=verdict.message, **base,
                          **layer_fields(_layer_stats(), before))  # fmt: skip
    holdings = Holdings.take(checkpoint.files)
    meter = MemoryMeter().start()
    tensors: dict[str, Any] = {}
    loaded: Any = None
    failure: BaseException | None = None
    try:
        with Context(LRU=int(job.lru)):
            loaded = loader.load(checkpoint, DEVICE, options)
            tensors = _check_loaded(loaded, checkpoint, job, loader.keeps_float_dtype)
            Device[DEVICE].synchronize()
    except Exception as exc:  # the loader is the system under test: anything it raises is a result
        failure, trace = exc, "".join(traceback.format_exception(exc))
        _drop_frames(exc)  # its frames hold the loader's tensors: they must not outlive the cleanup
    loaded = None  # a rejected return value (tensors elsewhere, a list) must not outlive the cleanup either
    memory = meter.stop()
    elapsed = time.monotonic() - started
    stats = _layer_stats()
    figures: dict[str, Any] = {"elapsed_s": elapsed, **meter_fields(memory), **layer_fields(stats, before)}
    if failure is None:
        digests, values = _read_back(tensors, job) if job.digests or job.values else ({}, {})
        loaded, count = sum(t.nbytes() for t in tensors.values()), len(tensors)
    _cleanup(tensors)
    figures["leaked"] = holdings.leaked() if holdings else {}  # after the cleanup: what the job alone still holds
    if failure is not None:
        verdict = decide(Evidence(claim=Claim.of(failure), layer=stats))
        if verdict.status is Status.ERROR:
            print(capped(trace), file=sys.stderr)
        return LoadResult(verdict.status, error_type=verdict.error_type, error_message=verdict.message, **base,
                          **figures)  # fmt: skip
    return LoadResult(Status.OK, bytes_loaded=loaded, tensors=count, digests=digests, values=values, **base, **figures)


def _check_loaded(loaded: Any, checkpoint: Any, job: LoadJob, keeps_float_dtype: bool) -> dict[str, Any]:
    """The loader's return value, if it keeps the loader contract; else LoaderContractError saying how not."""
    from tinygrad import Device, Tensor
    from tinygrad.nn.state import inverse_safe_dtypes

    from mali_hil.harness.loaders.base import LoaderContractError, final_dtype

    promise = f"a loader returns a dict of tensor name -> tinygrad Tensor on the device it is given ({DEVICE})"
    if not isinstance(loaded, dict):
        raise LoaderContractError(f"the loader returned {type(loaded).__name__}, not a dict: {promise}")
    strangers = [f"{name!r}: {type(value).__name__}" for name, value in loaded.items()
                 if not isinstance(name, str) or not isinstance(value, Tensor)]  # fmt: skip
    if strangers:
        raise LoaderContractError(f"{len(strangers)} entries are not tinygrad Tensors ({', '.join(strangers[:3])}):"
                                  f" {promise}")  # fmt: skip
    target = Device.canonicalize(DEVICE)
    elsewhere = [f"{name} on {tensor.device}" for name, tensor in loaded.items()
                 if not isinstance(tensor.device, str) or Device.canonicalize(tensor.device) != target]  # fmt: skip
    if elsewhere:
        raise LoaderContractError(f"{len(elsewhere)} tensors are not on the device under test {target} "
                                  f"({', '.join(elsewhere[:3])}): their memory is not the board's")  # fmt: skip
    # an unrealized tensor gets its memory when someone realizes it: after this job's figures, so it would look free
    lazy = [name for name, tensor in loaded.items() if tensor.numel() and not tensor.uop.is_realized]
    if lazy:
        raise LoaderContractError(f"{len(lazy)} tensors are not realized ({', '.join(lazy[:3])}): a loader returns "
                                  "realized tensors (Tensor.realize), whose memory this job then measures")  # fmt: skip
    wrong = []
    for name, tensor in loaded.items():
        entry = checkpoint.tensors.get(name)  # names a loader made up are not judged here (the properties are)
        if entry is None:
            continue
        stored = entry[1]
        want = final_dtype(stored.dtype, job.target_dtype, keeps_float_dtype)
        got = inverse_safe_dtypes.get(tensor.dtype, tensor.dtype.name)
        if (got, tuple(tensor.shape)) != (want, tuple(stored.shape)):
            wrong.append(f"{name} is {got}{list(tensor.shape)}, not {want}{list(stored.shape)}")
    if wrong:
        floats = "as stored" if keeps_float_dtype else f"in {job.target_dtype} as the job asked"
        raise LoaderContractError(f"{len(wrong)} tensors are not in their stored shape and dtype (floats {floats},"
                                  f" the rest as stored): {', '.join(wrong[:3])}")  # fmt: skip
    return loaded


def _read_back(tensors: dict[str, Any], job: LoadJob) -> tuple[dict[str, TensorDigest], dict[str, str]]:
    # A function of its own, so no loop variable keeps the last tensor alive past the cleanup.
    digests, values = {}, {}
    for name, tensor in tensors.items():
        keep: list[bytes] | None = [] if job.values and tensor.nbytes() <= _VALUES_LIMIT else None
        digests[name] = _digest(tensor, keep)
        if keep is not None:
            values[name] = base64.b64encode(b"".join(keep)).decode("ascii")
    return digests, values


def _drop_frames(exc: BaseException | None) -> None:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__


def _cleanup(tensors: dict[str, Any]) -> None:
    """Back to the state before the job: no tensors, and no buffers kept in any tinygrad cache (they count
    against the next job's device memory, or its RAM for the CPU device of the SUPPORT_BF16=0 route)."""
    from tinygrad import Device

    tensors.clear()
    gc.collect()
    for name in sorted(Device._opened_devices):
        device = Device[name]
        device.synchronize()
        if hasattr(device.allocator, "free_cache"):
            device.allocator.free_cache()
    _freeze_survivors()


def _freeze_survivors() -> None:
    """Take what is alive now (modules, tinygrad's caches: the worker's own state) out of the cyclic collector's
    scans. A full ``gc.collect`` walked all of it after every job: 76 ms a job, 64 s of the main job's 186 s.
    Reference counting still frees frozen objects; only a cycle among them is never collected, and everything
    a job makes afterwards is collected as before, so no job's tensors can be kept by this."""
    gc.freeze()


def serve(inbox: IO[str], outbox: IO[str]) -> None:
    def send(message: dict[str, Any]) -> None:
        outbox.write(json.dumps(message) + "\n")
        outbox.flush()

    try:
        backend, board = _put_on_board()
        facts = _backend_facts(backend)
        if board is not None:
            _check_on_board(board, facts)
    except Exception as exc:  # no device to serve on: say why in the hello, where the harness reads it
        send({"op": "hello", "protocol": PROTOCOL, "error": f"{type(exc).__name__}: {exc}"})
        return
    _freeze_survivors()  # the imports and the device: the first job's cleanup need not walk them
    send({"op": "hello", "protocol": PROTOCOL, "pid": os.getpid(), **facts})
    for line in inbox:
        try:
            request = json.loads(line)
        except json.JSONDecodeError:
            request = None
        if not isinstance(request, dict):
            send({"op": "error", "message": f"not a JSON object: {line[:200]!r}"})
            continue
        if request.get("op") == "exit":
            break
        if request.get("op") == "load":
            send({"op": "result", "id": request.get("id"), "result": _serve_job(request.get("job"), facts)})
        else:
            send({"op": "error", "id": request.get("id"), "message": f"unknown op {request.get('op')!r}"})


def _serve_job(data: Any, facts: dict[str, str]) -> dict[str, Any]:
    try:
        job = LoadJob.from_dict(data)
    except (TypeError, ValueError, AttributeError) as exc:
        return _infra("", facts, "", type(exc).__name__, f"malformed job {str(data)[:200]!r}: {exc}")
    try:
        return run_job(job, facts).to_dict()
    except Exception as exc:  # a bug of the harness itself, not of the loader: say so, keep serving
        traceback.print_exc(file=sys.stderr)
        return _infra(job.loader, facts, job.checkpoint, type(exc).__name__, f"worker failed: {exc}")


def _infra(loader: str, facts: dict[str, str], checkpoint: str, error_type: str, message: str) -> dict[str, Any]:
    verdict = decide(Evidence(infra=Claim(error_type, message)))
    return LoadResult(verdict.status, loader, facts["device_name"], checkpoint, error_type=verdict.error_type,
                      error_message=verdict.message).to_dict()  # fmt: skip


def _extend_loader_path() -> None:
    for folder in os.environ.get(LOADER_PATH_ENV, "").split(os.pathsep):
        if folder and folder not in sys.path:
            sys.path.append(folder)


def main() -> None:
    _extend_loader_path()
    # The protocol owns the real stdout; loaders and tinygrad print progress, which goes to stderr instead.
    outbox = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin, outbox)
