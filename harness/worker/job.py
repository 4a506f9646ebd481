"""One load job, in the fresh child the worker forked for it (see :mod:`mali_hil.harness.worker.serve`).

The child opens the device (driver threads do not survive a fork, so the worker itself never opens it), runs the
loader, checks what it returned, digests it, and tells its parent what it saw, as *claims*, over a pipe of its
own: ``ready`` (the device is open, the loader is next), ``loaded`` (the loader returned, before the read-back)
and ``claim`` (the loader's exception or the tensors' names, shapes and digests). The memory figures and the
layer's counters are not among them: the parent takes those from outside this process, and decides the status.

Everything the child does dies with it (the working folder, the environment, descriptors, patched modules), so
no job can change the next one. What the loader can still do in here is lie about its own claim; the identity
check below catches the plain ways of it (replacing the harness's functions in their modules, or their code).
"""

from __future__ import annotations

import base64
import contextlib
import gc
import json
import os
import traceback
from dataclasses import asdict
from typing import Any

from mali_hil.errors import MaliHilError
from mali_hil.harness.records.jobs import LoadJob
from mali_hil.harness.records.results import TensorDigest
from mali_hil.harness.values import digest as digest_module
from mali_hil.harness.values.digest import Digest
from mali_hil.harness.worker.leaks import Holdings
from mali_hil.runtime.verdict import Claim, capped

DEVICE = "CL"
_DIGEST_CHUNK = 16 << 20
_VALUES_LIMIT = 4 << 20  # values travel as base64 JSON: fine for test tensors, not for weights
BROKEN = (
    "the harness failed in the job's process after the loader returned (a loader can leave its process "
    "without descriptors or memory to go on): "
)


class ClaimWriter:
    """The child's end of its claims pipe: one JSON line per message, written whole (os.write loops). A mark
    (``ready``, ``loaded``, ``cleaned``) waits for the parent's answer on ``acks``, so the parent measures the job
    at that very point, not some time after it."""

    def __init__(self, fd: int, acks: int | None = None) -> None:
        self.fd, self.acks = fd, acks

    def send(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message) + "\n").encode("utf-8")
        while data:
            data = data[os.write(self.fd, data) :]

    def mark(self, op: str) -> None:
        self.send({"op": op})
        if self.acks is not None:
            os.read(self.acks, 1)


def run_job(job: LoadJob, facts: dict[str, str], claims: ClaimWriter) -> None:
    """Run one job in this (fresh) process and send its claims; never raises for anything the loader does."""
    from tinygrad import Device
    from tinygrad.helpers import Context

    from mali_hil.harness.checkpoints import validate_checkpoint
    from mali_hil.harness.checkpoints.validate import JOB_HEADER_LIMIT
    from mali_hil.harness.loaders import LoadOptions, get_loader

    claims.mark("ready")
    try:
        loader = get_loader(job.loader)
        # before any device allocation; a header too large to parse within a board's RAM is the checkpoint's
        # fault, refused here from its 8-byte prefix, not an OOM kill blamed on the loader
        checkpoint = validate_checkpoint(job.checkpoint, JOB_HEADER_LIMIT)
        options = LoadOptions(
            shard=job.shard, chunk_bytes=job.chunk_bytes, target_dtype=job.target_dtype, keep=job.keep
        )
    except MaliHilError as exc:  # refused before the loader ran: its checkpoint's fault
        claims.send({"op": "claim", "refused": True, "exception": _exception(exc)})
        return
    holdings = Holdings.take(checkpoint.files)
    guards = harness_identity()  # taken before any of the loader's code runs
    altered, send, mark = guards.altered, claims.send, claims.mark  # locals: a loader cannot rebind them here
    tensors: dict[str, Any] = {}
    loaded: Any = None
    failure: BaseException | None = None
    try:
        with Context(LRU=int(job.lru)):
            loaded = loader.load(checkpoint, DEVICE, options)
            if not altered():
                tensors = _check_loaded(loaded, checkpoint, job, loader.keeps_float_dtype)
                Device[DEVICE].synchronize()
    except Exception as exc:  # the loader is the system under test: anything it raises is a result
        failure, trace = exc, "".join(traceback.format_exception(exc))
        _drop_frames(exc)  # its frames hold the loader's tensors: they must not outlive the cleanup
    loaded = None  # a rejected return value (tensors elsewhere, a list) must not outlive the cleanup either
    _settle_layer()
    mark("loaded")
    changed = altered()
    if changed:
        send({"op": "claim", "altered": changed})
        return
    claim: dict[str, Any] = {"op": "claim"}
    try:
        if failure is None:
            digests, values = _read_back(tensors, job) if job.digests or job.values else ({}, {})
            claim.update(bytes_loaded=sum(t.nbytes() for t in tensors.values()), tensors=len(tensors),
                         digests={name: {**asdict(d), "shape": list(d.shape)} for name, d in digests.items()},
                         values=values)  # fmt: skip
        else:
            claim.update(exception=_exception(failure), trace=capped(trace))
        _cleanup(tensors)
        _settle_layer()
        mark("cleaned")  # the parent reads the device bytes still live: what the loader holds beyond its return
        claim["leaked"] = holdings.leaked() if holdings else {}  # after the cleanup: what the job alone still holds
    except Exception as exc:  # the process is the loader's: what it left (no descriptors, no memory) broke this
        claim = {"op": "claim", "exception": _exception(exc, BROKEN)}
    claim["altered"] = altered()  # the read-back ran the harness's code again: it must still be the harness's
    send(claim)


def _exception(exc: BaseException, context: str = "") -> dict[str, Any]:
    claim = Claim.of(exc)
    return {"error_type": claim.error_type, "message": capped(context + claim.message),
            "memory_error": claim.memory_error and not context, "runtime_error": claim.runtime_error}  # fmt: skip


def _settle_layer() -> None:
    """Wait (at most 1 s) for the buffers PoCL frees just after clFinish, so the counters the parent reads next
    are final; the values read here are not used (the parent reads its own)."""
    from mali_hil.runtime.layer_stats import read_layer_stats

    # no layer (`--device=local`), or a process the loader left without descriptors: nothing to wait for
    with contextlib.suppress(MaliHilError, OSError):
        read_layer_stats()


# --- the harness's own code, as the child calls it after the loader ---------------------------------------------
class Guards:
    """Identity of the harness code the child runs after the loader returns: each (owner, name) must still hold
    the same object, and each function its own code. Cheap (a few dozen attribute reads) and catches the ways a
    loader patches Python code; a loader that writes to memory through ctypes can go round it (the threat model
    in the README says so)."""

    def __init__(self, entries: list[tuple[Any, str]]) -> None:
        self._entries = [(owner, name, getattr(owner, name)) for owner, name in entries]
        self._code = [(obj, obj.__code__) for _, _, obj in self._entries if hasattr(obj, "__code__")]

    def altered(self) -> list[str]:
        changed = [f"{getattr(owner, '__name__', owner)}.{name}" for owner, name, obj in self._entries
                   if getattr(owner, name, None) is not obj]  # fmt: skip
        changed += [f"{obj.__qualname__}.__code__" for obj, code in self._code if obj.__code__ is not code]
        return changed


def harness_identity() -> Guards:
    """What the job's code calls after the loader: the contract check, the read-back and digests, the claims."""
    import sys

    import numpy as np
    from tinygrad import Device, Tensor

    from mali_hil.harness.loaders import _device, base
    from mali_hil.runtime import layer_stats

    this = sys.modules[__name__]
    entries: list[tuple[Any, str]] = [(this, name) for name in (
        "_check_loaded", "_read_back", "_digest", "_cleanup", "_settle_layer", "_exception", "Holdings")]  # fmt: skip
    entries += [(ClaimWriter, "send"), (ClaimWriter, "mark"), (Holdings, "leaked"), (Digest, "update"),
                (Digest, "hexdigest"), (digest_module, "canonical_bits"), (_device, "read_at"), (base, "final_dtype"),
                (layer_stats, "read_layer_stats"), (Tensor, "numpy"), (Tensor, "nbytes"), (Tensor, "numel"),
                (type(Device), "canonicalize"), (np, "empty"), (np, "isnan"), (np, "ascontiguousarray"),
                (json, "dumps"), (os, "write"), (os, "read"), (base64, "b64encode"),
                (digest_module.hashlib, "sha256")]  # fmt: skip
    return Guards(entries)


# --- checks and read-back -----------------------------------------------------------------------------------------
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
    """Drop the job's tensors and tinygrad's cached buffers, so what still holds the checkpoint afterwards is the
    loader's leak (worker.leaks), not the harness's own references."""
    from tinygrad import Device

    tensors.clear()
    gc.collect()
    for name in sorted(Device._opened_devices):
        device = Device[name]
        device.synchronize()
        if hasattr(device.allocator, "free_cache"):
            device.allocator.free_cache()
