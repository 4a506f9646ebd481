"""A lease on one labgrid place: reserve (waiting, with a limit, never sharing), lock, read its board's address,
and release on every exit path.

Each lease locks under the identity of the process that holds it (:mod:`mali_hil.harness.farm.identity`), so a
lock left by a process that died (SIGKILL, a lost CI runner) names a process the janitor can prove gone.
Release is ``release-from`` our own identity, which labgrid applies atomically: a lock that is no longer ours
(the coordinator restarted and someone else locked the place meanwhile) is never taken from its new holder.
"""

from __future__ import annotations

import atexit
import signal
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mali_hil.harness.farm.client import LabgridClient, Place
from mali_hil.harness.farm.failures import CoordinatorError, PlaceError
from mali_hil.harness.farm.identity import RunIdentity

DEFAULT_WAIT = 600.0  # seconds a run waits for a busy board before it gives up (a MISS, never a shared board)
_live: weakref.WeakSet[Lease] = weakref.WeakSet()


@dataclass
class NetworkService:
    """labgrid's ``NetworkService`` resource: how to reach the board over SSH."""

    address: str
    username: str | None = None
    port: int | None = None

    @classmethod
    def of(cls, place: Place) -> NetworkService:
        params = place.resources.get("NetworkService")
        if not params or not params.get("address"):
            raise PlaceError(f"place {place.name} has no NetworkService resource (exported with an address): "
                             "the farm reaches boards over SSH; add one to the exporter's configuration")  # fmt: skip
        port = params.get("port")
        return cls(str(params["address"]), str(params.get("username") or "") or None, int(port) if port else None)  # type: ignore[call-overload]


@dataclass(eq=False)
class Lease:
    """``acquire()`` -> the place's name and NetworkService; ``release()`` (idempotent) gives it back."""

    selector: Mapping[str, str]
    coordinator: str | None = None
    wait: float = DEFAULT_WAIT
    identity: RunIdentity = field(default_factory=RunIdentity.of_process)
    place: str | None = None
    service: NetworkService | None = None
    token: str | None = None
    released_place: str | None = None
    release_error: str | None = None
    lock_lost: bool = False
    _locked: bool = False  # the lock was gone at release: another run could have used the board meanwhile
    timings: dict[str, float] = field(default_factory=dict)  # seconds: reserve, lock, release

    def __post_init__(self) -> None:
        self.client = LabgridClient(self.coordinator, self.identity.env())

    def acquire(self) -> NetworkService:
        """Three requests: reserve (waiting), lock the reserved place, show it (its name and NetworkService)."""
        install_sigterm_cleanup()  # first: a SIGTERM while waiting must stop the waiting client and cancel
        started = time.monotonic()
        self.token = self.client.reserve(self.selector, self.wait)
        _live.add(self)
        try:
            reserved = time.monotonic()
            self.timings["reserve_s"] = reserved - started
            self.client.lock("+", self.token)
            self._locked = True  # from here on, release() unlocks
            self.timings["lock_s"] = time.monotonic() - reserved
            place = self.client.show("+", token=self.token)
            self.place = place.name
            self.service = NetworkService.of(place)
        except BaseException:
            self.release()
            raise
        return self.service

    def release(self) -> None:
        """Unlock (only if the lock is still ours: labgrid's atomic ``release-from``) and cancel the reservation;
        safe to call again, and from an exit path: it never raises for a coordinator that is gone, it says so on
        the lease. A reservation the coordinator no longer knows means it restarted meanwhile and forgot the lock
        too (it keeps neither across a restart): ``lock_lost``, as another run could have had the board."""
        token, place, locked = self.token, self.place, self._locked
        self.token, self.place, self._locked = None, None, False
        if token is None and not locked:
            return
        started = time.monotonic()
        try:
            if locked:
                self.released_place = place
                # a place name when we know it, else the reservation (the lock went through, show did not)
                self.client.release_from(place or "+", self.identity.holder, token=None if place else token)
            if token is not None and not self.client.cancel(token):
                self.lock_lost = locked
        except CoordinatorError as exc:
            self.lock_lost = locked
            self.release_error = str(exc)
        finally:
            self.timings["release_s"] = time.monotonic() - started
            _live.discard(self)

    def describe(self) -> dict[str, Any]:
        return {"place": self.place or self.released_place, "holder": self.identity.holder, "lock_lost": self.lock_lost,
                "timings": dict(self.timings)}  # fmt: skip

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def release_all() -> None:
    """Release every lease of this process (atexit, and the SIGTERM path)."""
    for lease in list(_live):
        lease.release()


atexit.register(release_all)
_installed = False


def install_sigterm_cleanup() -> None:
    """Turn SIGTERM (a CI job cancelled, ``kill``) into KeyboardInterrupt, so pytest and the CLI unwind through
    their ``finally`` blocks and release: atexit alone does not run on a signal's default action. Only where
    nobody set a handler of their own, and only in the main thread (where Python runs handlers)."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return
    signal.signal(signal.SIGTERM, _on_sigterm)
    _installed = True


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
