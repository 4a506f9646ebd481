"""mali-hil's pytest plugin (entry point ``pytest11``)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mali-hil", "mali-hil: load ML weights on (emulated) Mali boards")
    group.addoption(
        "--device",
        action="append",
        default=[],
        dest="mali_hil_devices",
        metavar="DEVICE",
        help="device to run load jobs on: emulated-mali[:PROFILE[:RAM]], local. Repeat for several.",
    )
