"""threshold's search arithmetic, and its resized board: the board's limits come from the profile's own rule, and
must be those of the device that a probe at that RAM really gets (threshold predicts with the first and measures
on the second)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mali_hil.harness.devices import make_device
from mali_hil.harness.sizing.threshold_search import STEP, ResizableBoard, smallest_fitting

MiB = 1 << 20


@pytest.mark.parametrize("spec", ["emulated-mali:mali-g52:2GiB", "emulated-mali:mali-g610-rusticl", "emulated-mali"])
def test_a_resized_boards_limits_are_those_of_the_device_made_for_it(spec: str) -> None:
    board = ResizableBoard(spec)
    for ram in (256 * MiB, 1000 * MiB, 2048 * MiB, 4096 * MiB, 4112 * MiB, 6144 * MiB):
        made = make_device(board.at(ram)).board
        assert board.limits(ram) == (made.cap_bytes, made.ram_budget), ram


@given(
    need=st.integers(0, 600 * STEP),
    floor=st.integers(0, 60).map(lambda k: k * STEP),
    ceiling=st.integers(1, 500).map(lambda k: k * STEP),
    start=st.integers(0, 600 * STEP),
)
def test_threshold_search_finds_the_smallest_fitting_ram(need: int, floor: int, ceiling: int, start: int) -> None:
    probed: list[int] = []

    def fits(ram: int) -> bool:
        assert floor < ram <= ceiling and ram % STEP == 0 and ram not in probed
        probed.append(ram)
        return ram >= need

    expected = next((k * STEP for k in range(floor // STEP + 1, ceiling // STEP + 1) if k * STEP >= need), None)
    assert smallest_fitting(fits, start=start, floor=floor, ceiling=ceiling) == expected
    assert len(probed) <= 2 * (ceiling // STEP).bit_length() + 2  # logarithmic, never a linear walk
