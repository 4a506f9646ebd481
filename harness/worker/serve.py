"""The device-side worker: a pristine warm parent that runs each load job in a fresh child of its own (a zygote).

It speaks :mod:`mali_hil.harness.worker.protocol` on stdin and on the process's original stdout (everything the
loaders print is sent to stderr instead), whatever transport carries it. The worker imports tinygrad, numpy and
the harness once, opens no OpenCL device and never runs a loader's code; per job it forks a child that opens the
device, runs the loader and reports its claims (:mod:`mali_hil.harness.worker.job`), then exits. So nothing a job
does outlives it: not a patched module, a working folder or environment changed, descriptors leaked, nor a process
it started (the worker is a child subreaper: a daemon's double fork lands here, and is killed at the job's end).

The job's record is assembled here, outside the job's process, from evidence (:mod:`mali_hil.harness.worker.record`):
how the child ended (``waitpid``, never the end of a pipe some descendant may hold), the memory of the child and
every process it started, and the OpenCL layer's counters, both sampled from here (:mod:`mali_hil.runtime.meter`);
the child's claims (names, shapes, digests, the loader's exception) only add what the job says of itself.

When told to emulate (``MALI_HIL_EMULATE=PROFILE[:RAM]``), the worker configures the emulated Mali before any
OpenCL library is initialised, and every job's child opens its device through the layer, on whatever machine it runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import IO, Any

from mali_hil.emulator.backend import Fp16Fidelity
from mali_hil.harness.records.jobs import LoadJob
from mali_hil.harness.worker import record, warm
from mali_hil.harness.worker.protocol import BACKEND_ENV, EMULATE_ENV, LOADER_PATH_ENV, PROTOCOL
from mali_hil.runtime.layer_stats import STATS_FILE_ENV
from mali_hil.runtime.memory import tree_pids
from mali_hil.runtime.meter import JobMeter, LayerWatch
from mali_hil.runtime.oom_counters import OomKillCounts

_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER = 1, 36
END_WAIT = 5.0  # seconds for a job's leftover processes to die once killed


def _put_on_board() -> tuple[str, Any]:
    """Configure the emulated Mali this worker was told to emulate, if any (environment only: each job's child
    opens the device); returns the backend's description and the board (None when the device is the machine's)."""
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


def _open_device(backend: str, board: Any) -> dict[str, str]:
    """In a job's child: open the device and check it is the board asked for (BackendError if not)."""
    from tinygrad import Device

    from mali_hil.harness.worker.job import DEVICE

    dev = Device[DEVICE]
    fp16 = Fp16Fidelity.NATIVE if "cl_khr_fp16" in dev.device_exts else Fp16Fidelity.EMULATED
    facts = {"device_name": dev.device_name, "fp16": fp16.value, "backend": backend}
    if board is not None:
        _check_on_board(board, facts)
    return facts


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


class Zygote:
    """The warm parent: forks one child per job, meters it from outside, ends everything it started."""

    def __init__(self, outbox: IO[str], backend: str, board: Any) -> None:
        self.outbox, self.backend, self.board = outbox, backend, board
        stats = os.environ.get(STATS_FILE_ENV)
        self.stats_file = Path(stats) if stats and board is not None else None
        libc = ctypes.CDLL(None, use_errno=True)
        self._prctl = libc.prctl
        # orphans of a job (a daemon's double fork, a setsid) come back to this process, so they stay countable
        # and killable; without it they would go to init and outlive the job
        self._prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    def fork_job(self, job: LoadJob | None) -> tuple[int, dict[str, Any], JobMeter]:
        """Run ``job`` (None: only open the device and say its facts) in a fresh child; returns the child's wait
        status, its claims and the meter that watched it, once it and everything it started have ended."""
        for suffix in ("", ".live"):  # the last job's files: this child's layer writes its own
            if self.stats_file is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self.stats_file}{suffix}")
        read_end, write_end = os.pipe()
        ack_read, ack_write = os.pipe()
        output_read, output_write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        kills_before = OomKillCounts.read()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            os.close(ack_write)
            os.close(output_read)
            self._child(job, write_end, ack_read, output_write)  # never returns
        os.close(write_end)
        os.close(ack_read)
        os.close(output_write)
        meter = JobMeter(pid, LayerWatch(self.stats_file))
        claims = ClaimReader(read_end, ack_write, meter)
        output = OutputTail(output_read)
        claims.thread.start()
        output.thread.start()
        _, status, _ = os.wait4(pid, 0)  # the job ends when its process does, whoever still holds its pipe
        meter.oom_kills = OomKillCounts.read().since(kills_before)
        self.end_descendants()
        claims.thread.join(END_WAIT)
        output.thread.join(END_WAIT)
        os.close(ack_write)
        meter.stop()
        messages = {**claims.messages, record.OUTPUT: output.tail()}  # a key no claim can take (not in _CLAIM_OPS)
        return status, messages, meter

    def _child(self, job: LoadJob | None, claims_fd: int, acks_fd: int, output_fd: int) -> None:
        """The job's process: off the protocol's pipes, dies with the worker, opens the device, runs the job."""
        from mali_hil.harness.worker.job import ClaimWriter, run_job

        code = 0
        try:
            os.close(self.outbox.fileno())  # the protocol is the parent's alone: nothing of the job may write on it
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
            for fd in (1, 2):  # what the job prints goes through the worker, which keeps its end for the record
                os.dup2(output_fd, fd)
            os.close(output_fd)
            self._prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
            claims = ClaimWriter(claims_fd, acks_fd)
            try:
                facts = _open_device(self.backend, self.board)
            except Exception as exc:  # no device to run on: the harness's failure, not the loader's
                claims.send({"op": "claim", "infra": f"{type(exc).__name__}: {exc}"})
            else:
                if job is None:
                    claims.send({"op": "facts", **facts})
                else:
                    run_job(job, facts, claims)
        except BaseException as exc:  # a bug of the harness itself, in the child: say so
            traceback.print_exc(file=sys.stderr)
            with contextlib.suppress(Exception):
                ClaimWriter(claims_fd).send({"op": "claim", "infra": f"worker failed: {type(exc).__name__}: {exc}"})
            code = 70
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def end_descendants(self) -> bool:
        """SIGKILL every process the job left (all descendants of this worker, the re-parented among them), reap
        them, and wait until none is left (at most END_WAIT seconds); returns whether none is."""
        me = os.getpid()
        deadline = time.monotonic() + END_WAIT
        while True:
            left = [pid for pid in tree_pids(me, living=True) if pid != me]
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            _reap_all()
            if not left or time.monotonic() >= deadline:
                return not left
            time.sleep(0.005)


def _reap_all() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


_CLAIM_OPS = frozenset({"ready", "loaded", "cleaned", "claim", "facts"})
OUTPUT_TAIL = 2000  # bytes kept of what the job printed


class OutputTail:
    """Passes what the job's process prints on to the worker's stderr as it comes, keeping the last of it: a job
    whose process dies says why in its output (a fault handler's traceback, a driver's complaint), and the record
    of the death quotes it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._tail = b""
        self.thread = threading.Thread(target=self._run, name="mali-hil-output", daemon=True)

    def _run(self) -> None:
        with os.fdopen(self.fd, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                with contextlib.suppress(OSError):
                    os.write(2, chunk)
                self._tail = (self._tail + chunk)[-OUTPUT_TAIL:]

    def tail(self) -> str:
        return self._tail.decode("utf-8", errors="replace")


class ClaimReader:
    """Reads the child's claims as they come: ``ready`` and ``loaded`` move the meter, the rest is kept. A message
    sent twice, or one the child never sends, means something in the job wrote on the harness's pipe: kept as
    ``conflict``."""

    def __init__(self, fd: int, acks: int, meter: JobMeter) -> None:
        self.fd, self.acks, self.meter = fd, acks, meter
        self.messages: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, name="mali-hil-claims", daemon=True)

    def _run(self) -> None:
        with os.fdopen(self.fd, "rb") as pipe:
            for raw in pipe:
                try:
                    message = json.loads(raw)
                except ValueError:
                    message = None
                op = message.get("op") if isinstance(message, dict) else None
                if op not in _CLAIM_OPS or op in self.messages:
                    self.messages.setdefault("conflict", raw[:200].decode("utf-8", errors="replace"))
                    continue
                self.messages[op] = message
                if op == "ready":
                    self.meter.start()
                elif op == "loaded":
                    self.meter.loaded()
                elif op == "cleaned":
                    self.meter.cleaned()
                if op in ("ready", "loaded", "cleaned"):  # the child waits for this: it was measured at its mark
                    with contextlib.suppress(OSError):
                        os.write(self.acks, b"\n")


def serve(inbox: IO[str], outbox: IO[str]) -> None:
    def send(message: dict[str, Any]) -> None:
        outbox.write(json.dumps(message) + "\n")
        outbox.flush()

    try:
        backend, board = _put_on_board()
        warm.warm_imports()
        zygote = Zygote(outbox, backend, board)
        _, messages, _ = zygote.fork_job(None)  # the device opens in a child as each job's will: say its facts
        facts = messages.get("facts")
        if not isinstance(facts, dict):
            raise RuntimeError(messages.get("claim", {}).get("infra") or "the device probe ended without its facts")
        facts = {key: facts[key] for key in ("device_name", "fp16", "backend")}
    except Exception as exc:  # no device to serve on: say why in the hello, where the harness reads it
        send({"op": "hello", "protocol": PROTOCOL, "error": f"{type(exc).__name__}: {exc}"})
        return
    gc.freeze()  # what every child inherits: its collector need not walk it, and its pages stay shared
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
            send({"op": "result", "id": request.get("id"), "result": _serve_job(zygote, request.get("job"), facts)})
        else:
            send({"op": "error", "id": request.get("id"), "message": f"unknown op {request.get('op')!r}"})


def _serve_job(zygote: Zygote, data: Any, facts: dict[str, str]) -> dict[str, Any]:
    try:
        job = LoadJob.from_dict(data)
    except (TypeError, ValueError, AttributeError) as exc:
        return record.infra(None, facts, type(exc).__name__, f"malformed job {str(data)[:200]!r}: {exc}")
    try:
        status, messages, meter = zygote.fork_job(job)
        return record.assemble(job, facts, status, messages, meter, zygote.board).to_dict()
    except Exception as exc:  # a bug of the harness itself, not of the loader: say so, keep serving
        traceback.print_exc(file=sys.stderr)
        return record.infra(job, facts, type(exc).__name__, f"worker failed: {exc}")


def _extend_loader_path() -> None:
    for folder in os.environ.get(LOADER_PATH_ENV, "").split(os.pathsep):
        if folder and folder not in sys.path:
            sys.path.append(folder)


def main() -> None:
    warm.choose_default_device()  # before anything imports tinygrad
    _extend_loader_path()
    # The protocol owns the real stdout; loaders and tinygrad print progress, which goes to stderr instead.
    outbox = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin, outbox)
