"""A ``--device`` value, parsed once at the edge into a typed spec; each kind reads its own ``target``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mali_hil.errors import DeviceSpecError

_KIND = re.compile(r"[a-z][a-z0-9-]*\Z")


@dataclass(frozen=True)
class DeviceSpec:
    """``emulated-mali:mali-g610:3GiB`` -> kind ``emulated-mali``, target ``mali-g610:3GiB``.

    URL-shaped values keep the whole URL as their target (``ssh://pi@board:22?emulate=mali-g52`` -> kind ``ssh``),
    so the kind that owns them parses the URL with a URL parser, not by splitting on colons.
    """

    text: str  # as the user wrote it: the device's name in test ids, reports and JUnit properties
    kind: str
    target: str  # what follows ``KIND:`` (empty for a bare kind); the whole value for URLs

    @classmethod
    def parse(cls, text: str | DeviceSpec) -> DeviceSpec:
        if isinstance(text, DeviceSpec):
            return text
        value = text.strip()
        if not value or any(ch in value for ch in "\n\r\0"):
            raise DeviceSpecError(f"device {text!r} is empty or holds a line break: write e.g. emulated-mali:mali-g610")
        if "://" in value:
            kind, target = value.partition("://")[0], value
        else:
            kind, _, target = value.partition(":")
        if not _KIND.match(kind):
            raise DeviceSpecError(
                f"device {text!r} does not start with a device kind (lowercase letters, digits and '-'), "
                "e.g. emulated-mali:mali-g610:3GiB or local"
            )
        return cls(value, kind, target)

    def __str__(self) -> str:
        return self.text
