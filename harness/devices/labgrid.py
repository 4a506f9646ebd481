"""``labgrid:PLACE`` or ``labgrid:TAG=VALUE[,TAG=VALUE][?option=value&...]``: a board of a labgrid farm.

The device reserves a matching place on the coordinator (``--lg-coordinator``, else ``LG_COORDINATOR``, as
labgrid's own tools take it), waits for it while other runs hold it (up to ``wait`` seconds, never sharing),
locks it under this process's identity, and reaches the board through the place's ``NetworkService`` with the SSH
device. Options after ``?`` are the SSH device's (``emulate``, ``ssh_config``, ``workdir``, ``python``,
``retries``, ``connect_timeout``, ...) plus ``wait``. The lock is released when the device closes, when it cannot
start, at exit, on Ctrl-C and on SIGTERM; what a SIGKILL leaves, ``mali-hil farm janitor`` frees.
"""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import parse_qsl

from mali_hil.errors import DeviceSpecError, MaliHilError
from mali_hil.harness.devices.device import Device
from mali_hil.harness.devices.spec import DeviceSpec
from mali_hil.harness.transports.ssh_target import SshTarget

LEASES_ENV = "MALI_HIL_FARM_LEASES"
# in the environment of every process a labgrid device starts on its board: a later health check tells a process
# left there by a run on this place from one of another place (loopback boards share one machine)
PLACE_ENV = "MALI_HIL_PLACE"
_coordinator: str | None = None  # --lg-coordinator, set by the pytest plugin; None: LG_COORDINATOR


def set_coordinator(address: str | None) -> None:
    global _coordinator
    _coordinator = address


class LabgridDevice(Device):
    """An SSH device whose board is leased from labgrid for as long as the device lives."""

    lease: object  # mali_hil.harness.farm.lease.Lease (imported lazily: the farm is an optional extra)

    def start(self) -> None:
        try:
            super().start()
        except BaseException:
            self.lease.release()  # type: ignore[attr-defined]  # a board that cannot start is not kept locked
            raise

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.lease.release()  # type: ignore[attr-defined]
            _record(self.lease)


def _record(lease: object) -> None:
    """For ``mali-hil farm run``: the lease's place, holder, timings and whether the lock was lost, one JSON line
    in ``$MALI_HIL_FARM_LEASES`` (set only in the processes it starts)."""
    import json
    import os

    path = os.environ.get(LEASES_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(lease.describe()) + "\n")  # type: ignore[attr-defined]


def parse_target(target: str) -> tuple[dict[str, str], float | None, dict[str, str]]:
    """``gpu=mali-g610,board=rock5b?wait=60&emulate=mali-g610`` -> (selector, wait, SSH options)."""
    from mali_hil.harness.farm.client import parse_selector
    from mali_hil.harness.farm.failures import PlaceError

    selector_text, _, query = target.partition("?")
    try:
        selector = parse_selector(selector_text)
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except (PlaceError, ValueError) as exc:
        raise DeviceSpecError(f"device labgrid:{target}: {exc}; write labgrid:PLACE or labgrid:TAG=VALUE[,...]"
                              "[?option=value&...]") from None  # fmt: skip
    wait = None
    if "wait" in options:
        import argparse

        from mali_hil.harness.cli.args import seconds

        try:
            wait = seconds(options.pop("wait"))
        except argparse.ArgumentTypeError as exc:
            raise DeviceSpecError(f"device labgrid:{target}: wait: {exc}") from None
    return selector, wait, options


def check(spec: DeviceSpec) -> None:
    """The target's selector and options, checked without reserving a board (a usage check must not lease one)."""
    from mali_hil.harness.devices import ssh

    _, _, options = parse_target(spec.target)
    try:  # the SSH device's options, on a stand-in address: nothing connects until a device starts
        ssh.on_target(spec, SshTarget.of("127.0.0.1", None, None, options, spec.text)).close()
    except MaliHilError as exc:
        raise DeviceSpecError(f"device {spec.text}: {exc}") from None


def make(spec: DeviceSpec) -> Device:
    return on_lease(spec, _coordinator)


def on_lease(spec: DeviceSpec, coordinator: str | None) -> LabgridDevice:
    """The device for ``spec``, its board leased from ``coordinator`` (None: ``LG_COORDINATOR``) until it closes."""
    from mali_hil.harness.devices import ssh
    from mali_hil.harness.farm.lease import DEFAULT_WAIT, Lease

    selector, wait, options = parse_target(spec.target)
    lease = Lease(selector, coordinator, DEFAULT_WAIT if wait is None else wait)
    service = lease.acquire()
    try:
        target = SshTarget.of(service.address, service.username or None, service.port or None, options, spec.text)
        inner = ssh.on_target(spec, target)
        device = LabgridDevice(replace(inner.board, leased=True), inner.transport, env={PLACE_ENV: str(lease.place)},
                               retries=inner.retries)  # fmt: skip
        device.lease = lease
        return device
    except BaseException as exc:
        lease.release()
        if isinstance(exc, MaliHilError):
            raise DeviceSpecError(f"device {spec.text} (place {lease.released_place}): {exc}") from None
        raise


def one_worker(spec: DeviceSpec) -> bool:
    return True  # a leased board (Board.leased), whatever it runs: a second lease would wait for the first


make.check = check  # type: ignore[attr-defined]  # see mali_hil.harness.devices.registry
make.one_worker = one_worker  # type: ignore[attr-defined]
