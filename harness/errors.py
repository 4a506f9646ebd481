"""Harness errors; all share mali_hil.emulator.errors.MaliHilError as their root."""

from __future__ import annotations

from mali_hil.emulator.errors import MaliHilError


class JobSpecError(MaliHilError, ValueError):
    """A job's parameters (shard range, sizes, dtype) are invalid."""


class DeviceSpecError(MaliHilError, ValueError):
    """A --device value names no known device kind or is malformed."""


class WorkerError(MaliHilError, RuntimeError):
    """The device-side worker could not be started or spoke out of protocol."""


class ResultsFileError(MaliHilError, OSError):
    """A results or report file cannot be written (a missing or read-only folder, a full disk); names the path."""
