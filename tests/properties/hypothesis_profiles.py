"""The suite's hypothesis profiles, under names of our own: ``mali-hil-dev`` (quick), ``mali-hil-ci`` (taken when
``CI`` is set), ``mali-hil-nightly`` (thorough). Select one with ``--mali-hil-profile dev|ci|nightly``.

They apply to this suite's tests only, for the duration of each test (conftest's autouse fixture): installing
mali-hil never changes the settings of anyone else's hypothesis tests, and hypothesis' own ``ci`` profile keeps
its meaning. Load jobs cost a worker round trip and, on PoCL, kernel compiles, so example counts are far below
hypothesis' default of 100. ``ci`` keeps hypothesis' own CI settings (derandomized, no database, print_blob) and
only lowers the count; ``nightly`` is random and keeps its database, so each night explores new examples and
replays old failures.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from hypothesis import HealthCheck, Phase, settings

PREFIX = "mali-hil-"
CHOICES = ("dev", "ci", "nightly")
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]


def _register() -> None:
    base = {"deadline": None, "suppress_health_check": _SLOW_OK, "print_blob": True}
    settings.register_profile(f"{PREFIX}dev", max_examples=8, **base)
    settings.register_profile(f"{PREFIX}ci", parent=settings.get_profile("ci"), max_examples=6, **base)
    settings.register_profile(f"{PREFIX}nightly", max_examples=200, derandomize=False, phases=tuple(Phase), **base)


def profile_name(choice: str | None) -> str:
    """``dev``/``ci``/``nightly`` -> our profile's name; None -> ci when ``CI`` is set, else dev."""
    return PREFIX + (choice or ("ci" if os.environ.get("CI") else "dev"))


@contextmanager
def suite_profile(choice: str | None) -> Iterator[settings]:
    """Make our profile hypothesis' default while the block runs, then put back what was there."""
    _register()
    previous = _current_profile_name()
    settings.load_profile(profile_name(choice))
    try:
        yield settings.default
    finally:
        settings.load_profile(previous)


def _current_profile_name() -> str:
    current = getattr(settings, "get_current_profile_name", None)  # public since hypothesis 6.10x
    return current() if current is not None else getattr(settings, "_current_profile", None) or "default"
