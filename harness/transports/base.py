"""The transport seam: how the harness reaches the machine a worker runs on, kept apart from what the board is.

In labgrid's terms a board (:class:`mali_hil.harness.devices.Board`) is the resource, data only; a transport is
the driver, behaviour only. A transport starts a process on its side as a line channel, kills the whole remote
or local tree, says how the process ended, and makes files visible there. This machine is
:class:`~mali_hil.harness.transports.local.LocalTransport`; SSH and Docker are each one more module behind the
same two classes, and nothing above them changes.
"""

from __future__ import annotations

import abc
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from mali_hil.emulator.ram import Enforcement, RamVerdict
from mali_hil.emulator.supervisor import ProcessEnd


class Channel(abc.ABC):
    """A running process on the transport's side: text lines in and out, its RAM so far, and how it ended."""

    @abc.abstractmethod
    def send(self, line: str) -> None:
        """Write one line (without its newline) to the process's stdin; a gone process is not an error here:
        :meth:`receive` then sees the end of its output."""

    @abc.abstractmethod
    def receive(self, timeout: float) -> str | None:
        """The next line of its stdout (without the newline), None at the end of its output; raises
        :class:`TimeoutError` when nothing came within ``timeout`` seconds."""

    @abc.abstractmethod
    def memory(self) -> RamVerdict | None:
        """What the board's RAM enforcement has seen so far (never blocks); None where nothing of ours watches."""

    @abc.abstractmethod
    def kill(self) -> None:
        """SIGKILL the process and everything it started, wherever it runs."""

    @abc.abstractmethod
    def end(self, grace: float = 0.0) -> ProcessEnd:
        """Wait up to ``grace`` seconds for the process to exit, kill its tree if it has not, and say how it
        ended (the OOM verdict comes from evidence on its side). Idempotent; frees the channel's resources."""

    @abc.abstractmethod
    def stderr_tail(self, limit: int = 4000) -> str:
        """The last ``limit`` characters the process wrote to stderr."""


class StderrFile:
    """Where a channel's process writes its stderr: a private temporary file (it may grow large, and is read only
    after a death), of which ``tail`` gives the end."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the channel

    def tail(self, limit: int = 4000) -> str:
        if self.file.closed:
            return ""
        size = self.file.seek(0, os.SEEK_END)
        self.file.seek(max(0, size - 4 * limit))  # UTF-8 takes at most 4 bytes a character
        return self.file.read().decode(errors="replace")[-limit:]

    def close(self) -> None:
        self.file.close()


class Transport(abc.ABC):
    """How to run processes and place files on one machine (this one, a board over SSH, a container)."""

    #: what keeps a process within a RAM budget there (a watchdog or cgroup of ours, or the machine's own kernel)
    @abc.abstractmethod
    def enforcement(self, ram_budget: int | None) -> Enforcement:
        """The enforcement a process spawned with ``ram_budget`` gets, known before it is spawned."""

    @abc.abstractmethod
    def python(self) -> Sequence[str]:
        """The command that starts a Python with this mali-hil installed, on the transport's side."""

    @abc.abstractmethod
    def spawn(self, argv: Sequence[str], env: Mapping[str, str], *, ram_budget: int | None) -> Channel:
        """Start ``argv`` with ``env`` added to the side's own environment, in a process tree of its own,
        within ``ram_budget`` bytes of RAM (None: the machine's own limit). Raises a MaliHilError when it cannot."""

    @abc.abstractmethod
    def place(self, path: Path) -> str:
        """Make ``path`` (a file, or a sharded checkpoint's index with its shards beside it) visible to processes
        on the transport's side; returns the path they see."""

    def close(self) -> None:  # noqa: B027 - most transports hold nothing: closing them is a no-op
        """Release what the transport holds (connections, caches); processes were ended by their channels."""
