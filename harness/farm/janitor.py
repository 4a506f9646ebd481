"""``mali-hil farm janitor``: free the locks of mali-hil runs that are gone.

The rule, so that a live run's lock is never taken:
- only locks whose holder is a mali-hil run identity (``HOST/mali-hil.USER.BOOT.PID.START``) are considered;
  people's own locks and other tools' are never touched;
- only locks taken from this host (the janitor runs where the runs run: the farm's controller); a lock from
  another host is reported and left, as nothing here can see that host's processes;
- the holder is gone when this host has rebooted since (another boot id), or no process has that pid with that
  start time; a process with that pid and start time is the run itself, alive: its lock stays;
- the release is labgrid's ``release-from HOST/USER``, which the coordinator applies only while that very holder
  still holds the place, so a place re-locked by a new run between our look and our release stays locked.
The same rule applies to reservations: a gone run's reservation is cancelled, as labgrid never expires one whose
place was locked (and a place stays reserved, so unavailable to others, until its reservation goes).
"""

from __future__ import annotations

from dataclasses import dataclass

from mali_hil.harness.farm.client import LabgridClient
from mali_hil.harness.farm.identity import RunIdentity


@dataclass(frozen=True)
class Verdict:
    place: str
    holder: str
    action: str  # freed, would free, kept (alive), left (elsewhere), not ours, cancelled, would cancel
    why: str


def sweep(client: LabgridClient, *, dry_run: bool = False) -> list[Verdict]:
    verdicts = []
    for place in client.places():
        if place.acquired is None:
            continue
        identity = RunIdentity.parse(place.acquired)
        if identity is None:
            verdicts.append(Verdict(place.name, place.acquired, "not ours", "not a mali-hil run's lock"))
            continue
        state = identity.liveness()
        if state == "alive":
            verdicts.append(Verdict(place.name, place.acquired, "kept", f"process {identity.pid} still runs"))
        elif state == "elsewhere":
            verdicts.append(Verdict(place.name, place.acquired, "left",
                                    f"taken on host {identity.host}; run the janitor there"))  # fmt: skip
        else:
            why = f"process {identity.pid} (started at tick {identity.start}) is gone"
            if not dry_run:
                client.release_from(place.name, place.acquired)
            verdicts.append(Verdict(place.name, place.acquired, "would free" if dry_run else "freed", why))
    for token, owner in client.reservations().items():
        identity = RunIdentity.parse(owner)
        if identity is not None and identity.liveness() == "gone":
            if not dry_run:
                client.cancel(token)
            verdicts.append(Verdict(f"reservation {token}", owner, "would cancel" if dry_run else "cancelled",
                                    f"process {identity.pid} is gone"))  # fmt: skip
    return verdicts
