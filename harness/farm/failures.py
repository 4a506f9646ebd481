"""Farm errors: each names what labgrid said and what to do about it."""

from __future__ import annotations

from mali_hil.errors import MaliHilError


class FarmError(MaliHilError, RuntimeError):
    """Root of the farm's errors."""


class LabgridMissing(FarmError):
    """``labgrid-client`` is not installed next to mali-hil."""


class CoordinatorError(FarmError):
    """The coordinator could not be reached or refused a request; ``output`` is labgrid-client's own words."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


class PlaceError(FarmError, ValueError):
    """A place or tag selector matches nothing, or a place has no NetworkService to reach its board by."""


class ReservationTimeout(FarmError, TimeoutError):
    """The board stayed busy (or no place matched) for longer than the wait limit: the run never shares it."""


class LockLost(FarmError):
    """The lock was gone before the run released it (a coordinator restart forgets every lock)."""
