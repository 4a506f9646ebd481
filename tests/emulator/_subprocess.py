"""Run a Python snippet in a fresh process on an emulated board, and get back what it reported.

The ICD loader reads ``OPENCL_LAYERS`` once, at its first OpenCL call, so every scenario needs its own process.
A snippet reports with ``emit(value)`` (JSON); ``BoardRun.result`` is the last value it emitted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mali_hil.emulator.emulated_board import CONFIG_ENV, LAYERS_ENV, EmulatedBoard
from mali_hil.runtime.layer_stats import STATS_FILE_ENV

MARK = "MALI_HIL_RESULT "
PRELUDE = f"""
import json as _json
def emit(value):
    print({MARK!r} + _json.dumps(value), flush=True)
"""

# Snippet helpers for pyopencl scenarios: one context and queue on the (only) device.
PYOPENCL = """
import pyopencl as cl
from mali_hil.runtime.layer_stats import read_layer_stats, reset_layer_stats
ctx = cl.Context([cl.get_platforms()[0].get_devices()[0]])
queue = cl.CommandQueue(ctx)
MiB = 1 << 20
def live():
    return read_layer_stats().live_bytes
def create(nbytes):
    return cl.Buffer(ctx, cl.mem_flags.READ_WRITE, nbytes)
def create_code(nbytes):
    try:
        create(nbytes).release()
        return 0
    except cl.Error as exc:
        return exc.code
"""


@dataclass(frozen=True)
class BoardRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def results(self) -> list[Any]:
        return [json.loads(line[len(MARK) :]) for line in self.stdout.splitlines() if line.startswith(MARK)]

    @property
    def result(self) -> Any:
        if not self.results:
            raise AssertionError(f"snippet emitted nothing (exit {self.returncode}); stderr:\n{self.stderr}")
        return self.results[-1]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in (LAYERS_ENV, CONFIG_ENV, STATS_FILE_ENV)}


def run_snippet(code: str, env: dict[str, str] | None = None, timeout: float = 300) -> BoardRun:
    """Run ``code`` (dedented, after PRELUDE) in a fresh interpreter with ``env`` added to a clean environment."""
    full_env = {**_clean_env(), **(env or {})}
    source = PRELUDE + textwrap.dedent(code)
    proc = subprocess.run(
        [sys.executable, "-c", source], env=full_env, capture_output=True, text=True, timeout=timeout, check=False
    )
    return BoardRun(proc.returncode, proc.stdout, proc.stderr)


def run_on_board(
    spec: str, code: str, stats_file: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300
) -> BoardRun:
    """Run ``code`` in a fresh process put on the board ``spec`` (layer, config and optional stats file)."""
    board_env = EmulatedBoard.from_spec(spec).environ(stats_file)
    return run_snippet(code, {**board_env, **(env or {})}, timeout)


def run_ok(spec: str, code: str, stats_file: Path | None = None, env: dict[str, str] | None = None) -> Any:
    """``run_on_board`` for a snippet that must exit cleanly; its last emitted value."""
    run = run_on_board(spec, code, stats_file, env)
    assert run.returncode == 0, f"snippet failed (exit {run.returncode}):\n{run.stderr}"
    return run.result
