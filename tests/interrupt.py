"""Processes for the Ctrl-C tests: started so that a SIGINT reaches them as from a terminal, and never left behind.

A shell without job control starts ``cmd &`` with SIGINT and SIGQUIT ignored, children inherit that, and Python
then installs no KeyboardInterrupt handler: a suite started that way saw every Ctrl-C test hang until its timeout
and leave the interrupted process running. The dispositions are reset in the child, and whatever is still running
when the test ends (passed or not) is killed, its whole session when it has one.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any


def _as_from_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


@contextmanager
def interruptible(argv: Sequence[str], **popen: Any) -> Iterator[subprocess.Popen]:
    """``subprocess.Popen(argv, **popen)`` that a SIGINT interrupts; killed (with its session) on the way out."""
    proc = subprocess.Popen(argv, preexec_fn=_as_from_a_terminal, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            if popen.get("start_new_session"):
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        proc.communicate()
