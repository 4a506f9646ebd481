"""Memory sizes as people write them (``3GiB``, ``512MB``) and as reports show them: one parser, one format."""

from __future__ import annotations

import re

from mali_hil.errors import ProfileError

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}  # fmt: skip
MAX_SIZE = 1 << 60  # 1 EiB: a size above it is a typo, and int(float) of it would overflow or lose digits
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int) -> int:
    """``3GiB`` -> 3221225472. Binary (KiB, MiB, GiB) and decimal (KB, MB, GB) units; bare numbers are bytes."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ProfileError(f"cannot read memory size {text!r}: write a number and a unit, e.g. '3GiB', '512MiB'")
    value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not value < MAX_SIZE:  # also nan and inf: 400 digits read as a float are inf
        raise ProfileError(f"memory size {text!r} is beyond any machine (at most {MAX_SIZE >> 50} PiB)")
    return int(value)


def format_size(n: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {unit}"
    return f"{n} B"
