"""Argument types the commands share: each refuses a bad value with one line that names it (argparse prints it
as a usage error), so no command ever sees an overflowing size, a timeout of -1, inf, nan or 1e300, or a count
of 400 digits: every number is finite, positive (or at least a stated minimum) and at most a stated maximum, so
that what a command builds from it (threads' timers, lists of nodes, layers, processes) can exist."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from mali_hil.errors import MaliHilError
from mali_hil.sizes import parse_size


def size(text: str) -> int:
    """``512MiB``, ``3GiB``, ``1000000`` (bytes): a positive memory size."""
    try:
        value = parse_size(text)
    except MaliHilError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a size must be positive, got {text!r}")
    return value


#: The longest time any command waits for: a week. Longer is a typo (or 1e300, which no timer can hold).
MAX_SECONDS = 7 * 24 * 3600.0
_MAX_DIGITS = 30  # longer than any bound below: refused before int() spends time on it


def seconds(text: str) -> float:
    """A positive, finite number of seconds, at most MAX_SECONDS."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"a time must be a positive number of seconds, got {text!r}")
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"a time must be at most {MAX_SECONDS:.0f} seconds (a week), got {text!r}")
    return value


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argument type: a whole number from ``low`` to ``high``, both included."""

    def parse(text: str) -> int:
        try:
            value = int(text) if len(text.strip()) <= _MAX_DIGITS else None
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be a whole number from {low} to {high}, got {_short(text)}")
        return value

    return parse


def _short(text: str) -> str:
    return repr(text) if len(text) <= 40 else f"{text[:20]!r}... ({len(text)} characters)"


def share(text: str) -> float:
    """A fraction from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a share from 0 to 1, got {text!r}")
    return value
