"""A seeded fault for the board farm's tests (tests/farm/test_expectations.py): a loader whose wrong results
depend on the board. It is chunked, except on a board whose sessions set ``MALI_HIL_SEEDED_FAULT`` (the loopback
board's sshd ``SetEnv``): there, ``always`` makes every load round toward zero (wrong_loaders.truncating: the
numerics properties catch it), and ``every-second:PATH`` every second load, the first included, counted in the
file PATH on the board: a flaky board. It stands in for a board whose driver gets a conversion wrong, always or
sometimes. Load it as ``mali_hil.properties.seeded_boards:faulty_on_marked_boards`` (the worker imports it by its
installed name on the board).
"""

from __future__ import annotations

import fcntl
import os
from typing import Any

from mali_hil.harness.loaders import LoadOptions

FAULT_ENV = "MALI_HIL_SEEDED_FAULT"


def faulty_on_marked_boards(checkpoint: Any, device: str, options: LoadOptions) -> dict[str, Any]:
    from mali_hil.harness.loaders.chunked import load
    from mali_hil.properties.wrong_loaders import truncating

    return (truncating if _fault_now() else load)(checkpoint, device, options)


def _fault_now() -> bool:
    fault = os.environ.get(FAULT_ENV, "")
    if fault == "always":
        return True
    if not fault.startswith("every-second:"):
        return False
    with open(fault.partition(":")[2], "a+", encoding="utf-8") as counter:
        fcntl.flock(counter, fcntl.LOCK_EX)  # two jobs at once still count two
        counter.seek(0)
        loads = int(counter.read().strip() or 0) + 1
        counter.seek(0)
        counter.truncate()
        counter.write(str(loads))
    return loads % 2 == 1
