"""The harness's side of the worker protocol (see harness.worker): start a worker, send jobs, get results.

Devices differ only in the command that starts the worker and where it runs (here, over ssh, in a container);
this class is the same for all. Lines are read by a thread into a queue so that every wait has a timeout:
a hung worker can never hang the harness.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from harness.errors import WorkerError

_EOF = object()


class WorkerGone(WorkerError):
    """The worker exited (or was killed) before answering."""

    def __init__(self, message: str, returncode: int | None) -> None:
        super().__init__(message)
        self.returncode = returncode


class WorkerTimeout(WorkerError):
    """The worker did not answer in time; it has been killed."""


class WorkerProcess:
    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        start_timeout: float = 120.0,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the worker
        try:
            self.proc = subprocess.Popen(
                list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                env=dict(env) if env is not None else None, text=True, start_new_session=True, preexec_fn=preexec,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            self._stderr.close()
            raise WorkerError(f"cannot start the worker {' '.join(argv)!r}: {exc}") from None
        self._lines: queue.Queue[Any] = queue.Queue()
        threading.Thread(target=self._read, name="mali-hil-worker-reader", daemon=True).start()
        self.hello = self._receive(start_timeout, expect="hello")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(_EOF)

    def stderr_tail(self, limit: int = 4000) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-limit:]

    def _receive(self, timeout: float, expect: str) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise WorkerTimeout(f"worker gave no {expect!r} within {timeout:.0f} s; killed it") from None
        if line is _EOF:
            returncode = self.proc.wait()
            raise WorkerGone(f"worker exited ({returncode}) before its {expect!r}: {self.stderr_tail(800)}", returncode)
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            raise WorkerError(f"worker spoke out of protocol: {line[:200]!r}") from None
        if message.get("op") != expect:
            raise WorkerError(f"worker answered {message.get('op')!r} where {expect!r} was due: {message}")
        return message

    def request(self, message: dict[str, Any], expect: str, timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the worker is gone; _receive sees the end of its output and says how it ended
        return self._receive(timeout, expect)

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def close(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=timeout)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()
        self._stderr.close()
