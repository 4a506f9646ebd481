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
import queue
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from mali_hil.runtime.ram import Enforcement, RamVerdict
from mali_hil.runtime.supervisor import ProcessEnd


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


_EOF = object()


class PipeChannel(Channel):
    """A channel over a local process's pipes (the worker itself, or an ``ssh`` client in front of it): lines are
    written to its stdin, and read from its stdout by a thread into a queue, so that every wait has a timeout and
    a hung process can never hang the harness."""

    def __init__(self) -> None:
        self._lines: queue.Queue[Any] = queue.Queue()

    @abc.abstractmethod
    def _stdin(self) -> IO[bytes] | None:
        """The process's stdin."""

    def _deliver(self, line: str | None) -> None:
        """For the reader thread: one line of output, or None at its end."""
        self._lines.put(_EOF if line is None else line)

    def send(self, line: str) -> None:
        stdin = self._stdin()
        assert stdin is not None
        try:
            stdin.write(line.encode("utf-8") + b"\n")
            stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass  # gone (or closed by end()): receive() sees the end of its output and end() says how it ended

    def receive(self, timeout: float) -> str | None:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no line within {timeout:g} s") from None
        if line is _EOF:
            self._lines.put(_EOF)  # stays at the end for later callers
            return None
        return str(line)


class RelayedChannel(PipeChannel):
    """A pipe channel to a remote supervisor (over SSH, in a container): the lines it adds to the worker's stream
    (its RAM verdict, how the worker ended) are kept for ``memory()`` and ``end()``; the worker's own are delivered."""

    def __init__(self) -> None:
        super().__init__()
        self._memory: RamVerdict | None = None
        self._end: ProcessEnd | None = None

    def _take(self, line: str) -> None:
        """For the reader thread: one line of the supervisor's stream."""
        from mali_hil.runtime.remote import supervisor_message

        message = supervisor_message(line)
        if isinstance(message, RamVerdict):
            self._memory = message
        elif isinstance(message, ProcessEnd):
            self._end = message
        else:
            self._deliver(line)


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

    #: whether a device may keep a second worker started ahead there. Only where that costs the job under test
    #: nothing: on a real board every process shares the board's RAM, so an idle worker would shrink the job's.
    spare_workers = False

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
