"""Argument types the commands share: each refuses a bad value with one line that names it (argparse prints it
as a usage error), so no command ever sees an overflowing size or a timeout of -1, inf or nan."""

from __future__ import annotations

import argparse
import math

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


def seconds(text: str) -> float:
    """A positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"a time must be a positive number of seconds, got {text!r}")
    return value


def share(text: str) -> float:
    """A fraction from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a share from 0 to 1, got {text!r}")
    return value
