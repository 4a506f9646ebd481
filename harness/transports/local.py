"""This machine as a transport: processes run under the shared supervisor, files are already here.

Output lines are read by a thread into a queue so that every wait has a timeout: a hung worker can never hang
the harness. Stderr goes to a private temporary file (it may be large, and nobody reads it until a death).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import IO

from mali_hil.harness.transports.base import Channel, PipeChannel, StderrFile, Transport
from mali_hil.harness.worker.protocol import BACKEND_ENV
from mali_hil.runtime.ram import Enforcement, RamVerdict, select_enforcer
from mali_hil.runtime.supervisor import ISOLATED, ProcessEnd, Supervised


class LocalChannel(PipeChannel):
    def __init__(self, argv: Sequence[str], env: Mapping[str, str], ram_budget: int | None) -> None:
        self._stderr = StderrFile()
        enforcer = select_enforcer(ram_budget) if ram_budget is not None else None
        try:
            self._process = Supervised(
                argv, env={**os.environ, **env}, enforcer=enforcer,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr.file,
            )  # fmt: skip
        except BaseException:
            self._stderr.close()
            raise
        super().__init__()
        threading.Thread(target=self._read, name="mali-hil-channel-reader", daemon=True).start()

    def _read(self) -> None:
        stdout = self._process.proc.stdout
        assert stdout is not None
        for line in stdout:
            self._deliver(line.decode("utf-8", errors="replace").rstrip("\n"))
        self._deliver(None)

    def _stdin(self) -> IO[bytes] | None:
        return self._process.proc.stdin

    def memory(self) -> RamVerdict | None:
        return self._process.memory()

    def kill(self) -> None:
        self._process.kill()

    def end(self, grace: float = 0.0) -> ProcessEnd:
        stdin = self._process.proc.stdin
        if stdin is not None and not stdin.closed:
            with contextlib.suppress(OSError):
                stdin.close()  # a worker that reads its stdin to the end exits by itself within the grace
        ended = self._process.end(grace)
        if self._process.proc.stdout is not None:
            self._process.proc.stdout.close()
        return ended

    def stderr_tail(self, limit: int = 4000) -> str:
        return self._stderr.tail(limit)

    def __del__(self) -> None:
        self._stderr.close()


@cache
def backend_description() -> str:
    """This machine's OpenCL backend (PoCL's own platform version), asked once per process in a process without
    the layer (which answers as the Mali); workers on this machine get it instead of asking again."""
    from mali_hil.emulator.emulated_board import CONFIG_ENV, LAYERS_ENV

    code = "from mali_hil.emulator.backend import backend_info as b; print(b().platform_version.split('  ')[0])"
    env = {k: v for k, v in os.environ.items() if k not in (LAYERS_ENV, CONFIG_ENV)}
    try:
        done = subprocess.run([sys.executable, *ISOLATED, "-c", code], env=env, capture_output=True, text=True,
                              timeout=60, check=True)  # fmt: skip
    except (subprocess.SubprocessError, OSError):
        return "unknown OpenCL backend"
    return done.stdout.strip()


class LocalTransport(Transport):
    """Processes on this machine, each in a session of its own under the RAM enforcer a budget asks for."""

    # This machine is not the board: each worker's budget is enforced on its own process tree, so a worker
    # started ahead takes nothing from another's (Device keeps one only for workers that have a budget).
    spare_workers = True

    def enforcement(self, ram_budget: int | None) -> Enforcement:
        return Enforcement.KERNEL if ram_budget is None else select_enforcer(ram_budget).name

    def python(self) -> Sequence[str]:
        return (sys.executable,)

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], *, ram_budget: int | None) -> Channel:
        return LocalChannel(argv, {BACKEND_ENV: backend_description(), **env}, ram_budget)

    def place(self, path: Path) -> str:
        return str(Path(path).resolve())
