"""The suite's hypothesis profiles: ``dev`` (quick), ``ci`` (taken when ``CI`` is set), ``nightly`` (thorough).

Load jobs cost a worker round trip and, on PoCL, kernel compiles, so example counts are far below hypothesis'
default of 100. ``ci`` keeps hypothesis' own CI settings (derandomized, no database, print_blob) and only
lowers the count; ``nightly`` is random and keeps its database, so each night explores new examples and
replays old failures. Select one with ``--hypothesis-profile``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]


def register_profiles() -> None:
    base = {"deadline": None, "suppress_health_check": _SLOW_OK, "print_blob": True}
    settings.register_profile("dev", max_examples=8, **base)
    settings.register_profile("ci", parent=settings.get_profile("ci"), max_examples=6, **base)
    settings.register_profile(
        "nightly",
        max_examples=200,
        derandomize=False,
        phases=tuple(Phase),
        **base,
    )
    if os.environ.get("CI"):
        settings.load_profile("ci")
    else:
        settings.load_profile("dev")
