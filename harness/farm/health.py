"""Board health: a short check before each board's run, and the mark that takes a bad board out of later runs.

The check (:func:`check_board`) takes a lease of its own on the place and runs over the board's own transport,
through the same device a run uses: the board is reachable and ready (the SSH device's connect: its Python,
mali-hil's venv, an OpenCL device, RAM and disk free), its OpenCL device is the expected one (``expect=``, else the
place's ``gpu`` tag when that names a profile), no process of an earlier run on this place is left on it, and a
known-good tiny job loads and matches the oracle. A place that cannot be leased (busy, or gone) is not judged:
being busy says nothing about a board's health.

The mark lives in labgrid, on the place, where every controller, ``labgrid-client places`` and a person see it
and where it outlives a coordinator restart (places are saved; locks are not): the tag ``mali_hil_health`` set to
``unhealthy``, the reason in the place's comment (a comment a person wrote is kept after ours and given back on
reset), and the count of consecutive runs that ended in infrastructure errors in the tag ``mali_hil_infra_runs``.
The count is kept there too, not in the report folder: a nightly's workspace may start empty, several controllers
may run the same farm, and the count is only worth anything beside the mark it leads to. A place stays marked
until a person clears it (``mali-hil farm health --reset PLACE``), as LAVA's Bad health waits for an admin.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from mali_hil.errors import MaliHilError
from mali_hil.harness.farm.client import LabgridClient, Place

HEALTH_TAG, UNHEALTHY = "mali_hil_health", "unhealthy"
STREAK_TAG = "mali_hil_infra_runs"
NOTE = "mali-hil: unhealthy since"  # how our note starts in the place's comment
KEPT = " || was: "  # between our note and the comment the place had before
CHECK_WAIT = 60.0  # seconds the check waits for a busy board before it leaves it unjudged
JOB_TIMEOUT = 300.0  # seconds for the tiny job (a fresh worker imports tinygrad and opens its device first)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class BoardHealth:
    """The checks of one place, in order; the first that fails ends the list. ``judged`` is False when the board
    could not be leased (then no check ran and the board is neither healthy nor not)."""

    place: str
    checks: tuple[Check, ...]
    seconds: float
    judged: bool = True

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def reason(self) -> str:
        return "; ".join(f"{check.name}: {check.detail}" for check in self.checks if not check.ok)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "judged": self.judged, "reason": self.reason, "seconds": round(self.seconds, 2),
                "checks": [asdict(check) for check in self.checks]}  # fmt: skip


def expected_gpu(place: Place, device_options: Mapping[str, str]) -> str | None:
    """The profile the board's OpenCL device must be: ``expect=``, else the place's ``gpu`` tag if it names one."""
    if device_options.get("expect"):
        return device_options["expect"]
    from mali_hil.emulator.profile import load_profile

    gpu = place.tags.get("gpu")
    if not gpu:
        return None
    try:
        load_profile(gpu)
        return gpu
    except MaliHilError:
        return None  # a tag of the farm's own vocabulary, not a profile: nothing to hold the device to


def check_board(place: Place, coordinator: str | None, device_options: Mapping[str, str],
                wait: float = CHECK_WAIT) -> BoardHealth:  # fmt: skip
    """Lease ``place``, reach its board as a run does, and check it (see the module's docstring)."""
    from mali_hil.harness.devices import DeviceSpec
    from mali_hil.harness.devices.labgrid import on_lease

    started = time.monotonic()
    options = {**device_options, "wait": f"{wait:g}"}
    expect = expected_gpu(place, device_options)
    if expect:
        options["expect"] = expect
    try:
        device = on_lease(DeviceSpec.parse(f"labgrid:{place.name}?{urlencode(options, safe='/:')}"), coordinator)
    except MaliHilError as exc:  # busy past the wait, a coordinator that would not lease it, the run's own options:
        # none of them is the board's fault, and the run itself meets (and reports) the same
        return BoardHealth(place.name, (Check("lease", False, str(exc)),), time.monotonic() - started, judged=False)
    checks: list[Check] = []
    try:
        for step in (_ready, _no_leftovers, _tiny_job):
            checks.append(step(device, expect))
            if not checks[-1].ok:
                break
    finally:
        device.close()
    return BoardHealth(place.name, tuple(checks), time.monotonic() - started)


def _ready(device: Any, expect: str | None) -> Check:
    """Reachable and ready: the transport's connect prepares the board and refuses an unhealthy one."""
    transport = device.transport
    try:
        transport.connect()
    except MaliHilError as exc:
        return Check("reachable and ready", False, str(exc))
    facts = transport.health
    opencl = facts.get("opencl", {})
    return Check("reachable and ready", True, f"{opencl.get('device_name')!r} (expected: {expect or 'any'}), "
                 f"{facts.get('mem_available')} bytes of RAM available, {facts.get('disk_free')} bytes of disk "
                 "free")  # fmt: skip


def _no_leftovers(device: Any, expect: str | None) -> Check:
    """No process of an earlier run on this place is still on the board (it would hold RAM the next run
    measures): the processes whose environment carries this place's mark (devices.labgrid.PLACE_ENV)."""
    from mali_hil.harness.devices.labgrid import PLACE_ENV
    from mali_hil.harness.transports.ssh import REMOTE_MODULE
    from mali_hil.runtime.supervisor import ISOLATED

    mark = f"{PLACE_ENV}={device.env[PLACE_ENV]}"
    try:
        done = device.transport.run([*device.transport.python(), *ISOLATED, "-m", REMOTE_MODULE, "leftovers",
                                     "--mark", mark], timeout=60)  # fmt: skip
        found = json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (MaliHilError, ValueError, IndexError) as exc:
        return Check("no leftover processes", False, f"could not list the board's processes: {exc}")
    if found:
        listed = "; ".join(f"pid {p['pid']}: {p['cmdline'][:120]}" for p in found[:5])
        return Check("no leftover processes", False, f"{len(found)} process(es) of an earlier run: {listed}")
    return Check("no leftover processes", True, "none")


def _tiny_job(device: Any, expect: str | None) -> Check:
    """A known-good tiny load through the normal device path, its tensors checked against the oracle."""
    from mali_hil.harness.checkpoints import make_checkpoint
    from mali_hil.harness.records.jobs import LoadJob
    from mali_hil.harness.values.oracles import expected_digests

    with tempfile.TemporaryDirectory(prefix="mali-hil-health-") as folder:
        checkpoint = Path(folder) / "tiny.safetensors"
        make_checkpoint("tiny", checkpoint)
        result = device.run(LoadJob(checkpoint=str(checkpoint), loader="chunked", timeout_s=JOB_TIMEOUT))
        if not result.ok:
            return Check("tiny job", False, f"{result.status.value}: {result.error_type}: {result.error_message}")
        want = expected_digests(checkpoint)
    wrong = sorted(name for name, digest in want.items() if result.digests.get(name) != digest)
    if wrong or set(result.digests) != set(want):
        return Check("tiny job", False, f"loaded values differ from the oracle: {wrong[:5] or 'tensor names'}")
    return Check("tiny job", True, f"{len(want)} tensors as the oracle has them, {result.elapsed_s:.2f} s")


# --- the mark in labgrid ---------------------------------------------------------------------------------------
def unhealthy(place: Place) -> bool:
    return place.tags.get(HEALTH_TAG) == UNHEALTHY


def why_unhealthy(place: Place) -> str:
    """The reason our note in the comment gives (or a pointer, if someone changed the comment)."""
    note = place.comment.split(KEPT, 1)[0]
    return note if note.startswith(NOTE) else f"tagged {HEALTH_TAG}={UNHEALTHY} (comment: {place.comment!r})"


def mark(client: LabgridClient, place: Place, reason: str) -> str:
    """Tag ``place`` unhealthy, with the time and ``reason`` in its comment (its own comment kept after ours)."""
    kept = _persons_comment(place.comment)
    note = f"{NOTE} {datetime.now(UTC).isoformat(timespec='seconds')}: {' '.join(reason.split())[:600]}"
    client.set_comment(place.name, note + (KEPT + kept if kept else ""))
    client.set_tags(place.name, {HEALTH_TAG: UNHEALTHY})
    return note


def reset(client: LabgridClient, place: Place) -> None:
    """Clear the mark and the count; the comment the place had before our note comes back."""
    if place.comment.startswith(NOTE):
        client.set_comment(place.name, _persons_comment(place.comment))
    client.set_tags(place.name, {HEALTH_TAG: "", STREAK_TAG: ""})


def _persons_comment(comment: str) -> str:
    """The comment without our note: what the place said before it was marked."""
    if not comment.startswith(NOTE):
        return comment
    return comment.split(KEPT, 1)[1] if KEPT in comment else ""


def count_run(client: LabgridClient, place: Place, infra: str | None, limit: int) -> str | None:
    """After a board's run: ``infra`` says why it ended in infrastructure errors (None: it ran). The count goes
    up or back to zero; at ``limit`` runs in a row the board is marked, and the note is returned."""
    if infra is None:
        if STREAK_TAG in place.tags:
            client.set_tags(place.name, {STREAK_TAG: ""})
        return None
    before = place.tags.get(STREAK_TAG, "0")
    streak = (int(before) if before.isdigit() else 0) + 1
    client.set_tags(place.name, {STREAK_TAG: str(streak)})
    if streak < limit:
        return None
    return mark(client, place, f"{streak} runs in a row ended in infrastructure errors; the last: {infra}")
