"""Loaders that attack the harness's process handling, named by module path (``tests.faults.fault_loaders:NAME``).

Each writes the pids it leaves behind to the file named by ``MALI_HIL_TEST_PIDFILE`` so a test can check that
nothing outlived the job.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

PIDFILE_ENV = "MALI_HIL_TEST_PIDFILE"


def _fork_sleeper(own_group: bool) -> int:
    pid = os.fork()
    if pid == 0:  # the child inherits the protocol pipe and would hold it open for 5 minutes
        if own_group:
            os.setpgid(0, 0)  # out of the worker's process group, still in its session
        time.sleep(300)
        os._exit(0)
    with Path(os.environ[PIDFILE_ENV]).open("a") as out:
        out.write(f"{pid}\n")
    return pid


def forks_then_crashes(checkpoint: Any, device: str, options: Any) -> dict[str, Any]:
    _fork_sleeper(own_group=False)
    os.abort()


def forks_a_group_then_crashes(checkpoint: Any, device: str, options: Any) -> dict[str, Any]:
    _fork_sleeper(own_group=True)
    time.sleep(0.2)  # the child's setpgid has happened
    os.abort()


def raises_a_huge_message(checkpoint: Any, device: str, options: Any) -> dict[str, Any]:
    raise ValueError("x" * (8 << 20))
