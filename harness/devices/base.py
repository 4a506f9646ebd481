"""The one protocol every device kind implements, and the registry that maps ``--device`` values to kinds.

A device kind is one module that registers itself with ``@register_device("kind")``; it only decides how a
worker is started and where. Adding a kind touches that new module and nothing else.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

from harness.errors import DeviceSpecError
from harness.jobs import LoadJob
from harness.results import LoadResult

_KINDS: dict[str, Callable[[str], Device]] = {}
DEFAULT_DEVICE = "emulated-mali:mali-g610:3GiB"


class Device(abc.ABC):
    """A place that runs load jobs: start a worker, run jobs on it, stop."""

    spec: str  # the --device value this was made from

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def run(self, job: LoadJob) -> LoadResult:
        """Run one job; always returns a result record (dead workers and timeouts included), never raises."""

    @abc.abstractmethod
    def stop(self) -> None: ...

    def describe(self) -> dict[str, str]:
        """Facts for reports and JUnit properties (profile, backend, fp16 fidelity)."""
        return {"device": self.spec}

    def __enter__(self) -> Device:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def register_device(kind: str) -> Callable[[Callable[[str], Device]], Callable[[str], Device]]:
    def decorate(factory: Callable[[str], Device]) -> Callable[[str], Device]:
        if kind in _KINDS:
            raise ValueError(f"device kind {kind!r} is registered twice")
        _KINDS[kind] = factory
        return factory

    return decorate


def device_kinds() -> list[str]:
    _load_builtin_kinds()
    return sorted(_KINDS)


def make_device(spec: str) -> Device:
    """``emulated-mali:mali-g610:3GiB``, ``local``, ... -> a Device (not started)."""
    _load_builtin_kinds()
    kind = next((k for k in sorted(_KINDS, key=len, reverse=True) if spec == k or spec.startswith(k + ":")), None)
    if kind is None:
        raise DeviceSpecError(f"unknown device {spec!r}: known kinds are {', '.join(sorted(_KINDS))}")
    return _KINDS[kind](spec)


def _load_builtin_kinds() -> None:
    from harness.devices import emulated, local  # noqa: F401  (each module registers itself)
