"""Will a load fit a board? Predicted from a loader's declared bounds, before anything runs.

On a Mali the device's memory and the host's are one pool, so two limits apply: the loader's device bound
against the device's global memory (what the driver refuses past), and the worker's baseline plus the loader's
RAM bound (host copies and device buffers together) against the board's RAM budget (what the OOM killer ends).
"""

from __future__ import annotations

from dataclasses import dataclass

from mali_hil.sizes import format_size


@dataclass(frozen=True)
class FitPrediction:
    """``margin`` is the signed distance to the nearer limit, as a share of that limit (negative: overrun)."""

    fits: bool
    margin: float
    device_need: int  # the declared device bound
    ram_need: int  # worker baseline + the declared RAM bound (device buffers are in it: one pool on Mali)
    cap: int
    budget: int

    def describe(self) -> str:
        verdict = "fits" if self.fits else "does not fit"
        return (f"{verdict} ({self.margin:+.0%}): device {format_size(self.device_need)} of {format_size(self.cap)},"
                f" RAM {format_size(self.ram_need)} of {format_size(self.budget)}")  # fmt: skip


def predict_fit(bounds: tuple[int | None, int | None], *, cap: int, budget: int, baseline: int) -> FitPrediction | None:
    """From a loader's declared ``(device bound, RAM bound)`` and a board: fits iff device bound <= cap and
    baseline + RAM bound <= budget. None when a bound is undeclared. A profile whose max alloc is below its global
    memory may also refuse one large buffer; bounds do not name the largest buffer, so that is not predicted."""
    device_bound, ram_bound = bounds
    if device_bound is None or ram_bound is None:
        return None
    ram_need = baseline + ram_bound
    margin = min((cap - device_bound) / cap, (budget - ram_need) / budget)
    return FitPrediction(margin >= 0, margin, device_bound, ram_need, cap, budget)
