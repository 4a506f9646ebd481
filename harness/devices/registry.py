"""Device kinds by name: the entry point group ``mali_hil.devices`` (the built-ins are registered there too) and
:func:`register_device` for kinds defined at run time, e.g. in a test module.

A kind is a factory ``f(spec: DeviceSpec) -> Device`` that starts nothing. A factory that must acquire something to
make its device (labgrid's reserves and locks a board) carries ``f.check(spec)``: the same validation of the target
without acquiring it, which :func:`check_device` uses; a kind whose boards may take one worker of ours at a time
carries ``f.one_worker(spec)`` (:func:`one_worker`). Adding a kind touches its own module (and one entry point
line), never this file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, TypeAlias

from mali_hil.errors import DeviceSpecError
from mali_hil.harness.devices.spec import DeviceSpec

if TYPE_CHECKING:
    from mali_hil.harness.devices.device import Device

ENTRY_POINT_GROUP = "mali_hil.devices"
DEFAULT_DEVICE = "emulated-mali:mali-g610:3GiB"
# the default for --device where none is given (comma-separated for several): a CI matrix sets it per job and
# runs the same command everywhere; a --device given on the command line wins
DEVICE_ENV = "MALI_HIL_DEVICE"

DeviceFactory: TypeAlias = "Callable[[DeviceSpec], Device]"
_registered: dict[str, DeviceFactory] = {}


def env_devices() -> list[str]:
    """The devices ``MALI_HIL_DEVICE`` names (empty when it is unset or blank)."""
    return [item.strip() for item in os.environ.get(DEVICE_ENV, "").split(",") if item.strip()]


def register_device(kind: str, factory: DeviceFactory | None = None) -> Callable[..., DeviceFactory]:
    """Register ``factory`` for ``kind`` (also usable as a decorator); a kind can be registered once, and not
    over a kind an installed distribution declares."""
    DeviceSpec.parse(kind)  # the same rule for kind names as for --device values

    def add(made: DeviceFactory) -> DeviceFactory:
        if kind in _registered or kind in _entry_points():
            raise DeviceSpecError(f"device kind {kind!r} is registered twice")
        _registered[kind] = made
        return made

    if factory is not None:
        add(factory)
        return lambda made: made
    return add


def unregister_device(kind: str) -> None:
    """Forget a kind registered at run time (tests clean up after themselves with this)."""
    _registered.pop(kind, None)


def device_kinds() -> list[str]:
    return sorted({*_registered, *_entry_points()})


def make_device(spec: str | DeviceSpec) -> Device:
    """``emulated-mali:mali-g610:3GiB``, ``local``, ... -> a Device (not started). The kind validates its target."""
    from mali_hil.harness.devices.device import Device

    parsed = DeviceSpec.parse(spec)
    device = _factory(parsed)(parsed)
    if not isinstance(device, Device):
        raise DeviceSpecError(f"device kind {parsed.kind!r} made a {type(device).__name__}, not a Device")
    return device


def check_device(spec: str | DeviceSpec) -> None:
    """Raise DeviceSpecError for a target its kind refuses (``local:junk``, an unknown profile), acquiring nothing:
    the kind's ``check`` where it has one, else a device made and closed unstarted."""
    parsed = DeviceSpec.parse(spec)
    factory = _factory(parsed)
    check = getattr(factory, "check", None)
    if callable(check):
        check(parsed)
    else:
        make_device(parsed).close()


def one_worker(spec: str | DeviceSpec) -> bool:
    """Whether ``spec``'s board takes one worker of ours at a time (``Board.one_worker``: a physical or a leased
    board), told without making the device: the kind's ``one_worker`` where it has one, else False."""
    parsed = DeviceSpec.parse(spec)
    predicate = getattr(_factory(parsed), "one_worker", None)
    return bool(predicate(parsed)) if callable(predicate) else False


def _factory(parsed: DeviceSpec) -> DeviceFactory:
    factory = _registered.get(parsed.kind)
    if factory is None:
        found = _entry_points().get(parsed.kind)
        if found is None:
            raise DeviceSpecError(f"unknown device {parsed.text!r}: known kinds are {', '.join(device_kinds())}")
        try:
            factory = found.load()
        except Exception as exc:  # a broken third-party kind: name it, do not show its traceback
            raise DeviceSpecError(f"device kind {parsed.kind!r} ({found.value}) failed to import: {exc}") from exc
    return factory  # type: ignore[return-value]


def _entry_points() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
