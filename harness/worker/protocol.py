"""The job protocol between the harness and a worker, and the harness's side of it over any transport channel.

JSON lines, one message each, the same on every transport (a local pipe, ssh, a container's stdin/stdout)::

    <- {"op": "hello", "protocol": 2, "pid": ..., "device_name": ..., "fp16": ..., "backend": ...}   once
    <- {"op": "hello", "protocol": 2, "error": "..."}       the worker could not set its device up; it exits
    -> {"op": "load", "id": 7, "job": {...LoadJob...}}
    <- {"op": "result", "id": 7, "result": {...LoadResult...}}
    -> {"op": "exit"}

Requests carry an id that the answer repeats, so a stray or forged line can never be taken for another job's
result and shift every later result by one.
"""

from __future__ import annotations

import json
from typing import Any

from mali_hil.errors import WorkerError
from mali_hil.harness.transports.base import Channel

PROTOCOL = 2
WORKER_MODULE = "mali_hil.harness.worker"
#: the environment variable that tells a worker which emulated Mali to put itself on (``PROFILE[:RAM]``)
EMULATE_ENV = "MALI_HIL_EMULATE"
#: the OpenCL backend under the emulated device, as the harness already knows it (saves the worker a probe)
BACKEND_ENV = "MALI_HIL_BACKEND"
#: folders (``os.pathsep``-separated) where a worker also looks for users' ``module:function`` loaders. Workers
#: run with ``python -P``, so the current folder is not searched; these go at the *end* of ``sys.path``, after the
#: standard library and site-packages, so nothing there can be shadowed from them.
LOADER_PATH_ENV = "MALI_HIL_LOADER_PATH"


class WorkerGone(WorkerError):
    """The worker's output ended (it exited or was killed) before it answered."""


class WorkerTimeout(WorkerError):
    """The worker did not answer in time."""


class WorkerClient:
    """Speaks the protocol over ``channel``: waits for the hello, then one request at a time."""

    def __init__(self, channel: Channel, start_timeout: float) -> None:
        self.channel = channel
        self._next_id = 0
        hello = self._receive(start_timeout, "hello")
        if hello.get("protocol") != PROTOCOL:
            raise WorkerError(f"the worker speaks protocol {hello.get('protocol')!r}, this harness {PROTOCOL}: "
                              "install the same mali-hil version on both sides")  # fmt: skip
        if "error" in hello:
            raise WorkerError(f"the worker could not set up its device: {hello['error']}")
        self.hello: dict[str, Any] = hello

    def load(self, job: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one load job and return its result record (a dict); raises WorkerGone, WorkerTimeout, WorkerError."""
        self._next_id += 1
        request_id = self._next_id
        self.channel.send(json.dumps({"op": "load", "id": request_id, "job": job}))
        answer = self._receive(timeout, "result")
        if answer.get("id") != request_id:
            raise WorkerError(f"the worker answered job {answer.get('id')!r} where job {request_id} was due")
        result = answer.get("result")
        if not isinstance(result, dict):
            raise WorkerError(f"the worker's result for job {request_id} is not a record: {str(result)[:200]!r}")
        return result

    def exit(self) -> None:
        self.channel.send(json.dumps({"op": "exit"}))

    def _receive(self, timeout: float, expect: str) -> dict[str, Any]:
        try:
            line = self.channel.receive(timeout)
        except TimeoutError:
            raise WorkerTimeout(f"the worker gave no {expect!r} within {timeout:g} s") from None
        if line is None:
            raise WorkerGone(f"the worker's output ended before its {expect!r}")
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            message = None
        if not isinstance(message, dict):
            raise WorkerError(f"the worker spoke out of protocol: {line[:200]!r}")
        if message.get("op") != expect:
            raise WorkerError(f"the worker answered {message.get('op')!r} where {expect!r} was due: {line[:200]!r}")
        return message
