"""threshold's resized board: its limits come from the profile's own rule, and must be those of the device that a
probe at that RAM really gets (threshold predicts with the first and measures on the second)."""

from __future__ import annotations

import pytest

from mali_hil.harness.devices import make_device
from mali_hil.harness.sizing.threshold_search import ResizableBoard

MiB = 1 << 20


@pytest.mark.parametrize("spec", ["emulated-mali:mali-g52:2GiB", "emulated-mali:mali-g610-rusticl", "emulated-mali"])
def test_a_resized_boards_limits_are_those_of_the_device_made_for_it(spec: str) -> None:
    board = ResizableBoard(spec)
    for ram in (256 * MiB, 1000 * MiB, 2048 * MiB, 4096 * MiB, 4112 * MiB, 6144 * MiB):
        made = make_device(board.at(ram)).board
        assert board.limits(ram) == (made.cap_bytes, made.ram_budget), ram
