"""``labgrid-client`` as a subprocess, and its output read into data.

labgrid has no supported Python client API (its maintainers point to the CLI), so every request is one
``labgrid-client`` process with a timeout, under the run's identity (``LG_HOSTNAME``/``LG_USERNAME``) and with the
coordinator as labgrid's tools take it (``-x``, else ``LG_COORDINATOR``, else labgrid's default). Its output is
read line by line against the shapes labgrid 26 prints; anything else becomes a CoordinatorError quoting it.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mali_hil.harness.farm.failures import CoordinatorError, LabgridMissing, PlaceError

CALL_TIMEOUT = 60.0  # seconds for one request; the coordinator answers in well under one
_PLACE = re.compile(r"Place '(?P<name>[^']+)':\Z")
_RESOURCE = re.compile(r"(?:Matching|Acquired) resource '(?P<name>[^']+)' \((?P<path>[^)]+)\):\Z")
_TOKEN = re.compile(r"export LG_TOKEN=(?P<token>[A-Za-z0-9]+)\s*\Z")


@dataclass
class Place:
    name: str
    tags: dict[str, str] = field(default_factory=dict)
    acquired: str | None = None  # the holder, ``HOST/USER``
    reservation: str | None = None
    comment: str = ""
    resources: dict[str, dict[str, object]] = field(default_factory=dict)  # class -> params

    def matches(self, selector: Mapping[str, str]) -> bool:
        """As labgrid's scheduler matches a reservation: every tag equal; ``name`` is the place's own name."""
        tags = {**self.tags, "name": self.name}
        return all(tags.get(key) == value for key, value in selector.items())


def client_binary() -> str:
    """``labgrid-client`` of the environment mali-hil runs in (its venv's bin first), else from PATH."""
    beside = Path(sys.executable).with_name("labgrid-client")
    if beside.exists():
        return str(beside)
    found = shutil.which("labgrid-client")
    if found is None:
        raise LabgridMissing("labgrid-client is not installed: pip install 'mali-hil[farm]' (labgrid >= 26)")
    return found


class LabgridClient:
    """Requests to one coordinator (``None``: ``LG_COORDINATOR``, else labgrid's default) as one identity."""

    def __init__(self, coordinator: str | None = None, identity_env: Mapping[str, str] | None = None) -> None:
        self.coordinator = coordinator or os.environ.get("LG_COORDINATOR") or None
        self.identity_env = dict(identity_env or {})
        self.binary = client_binary()

    def argv(self, *args: str, place: str | None = None) -> list[str]:
        argv = [self.binary]
        if self.coordinator:
            argv += ["-x", self.coordinator]
        if place is not None:
            argv += ["-p", place]
        return [*argv, *args]

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        # grpc's fork support makes a forking client hang now and then; labgrid's own tests turn it off too
        # (and an LG_TOKEN of the caller's shell never picks the place: only an explicit token does)
        env = {key: value for key, value in os.environ.items() if key != "LG_TOKEN"}
        return {**env, "GRPC_ENABLE_FORK_SUPPORT": "0", **self.identity_env, **(extra or {})}

    def call(self, *args: str, place: str | None = None, timeout: float = CALL_TIMEOUT,
             extra_env: Mapping[str, str] | None = None) -> str:  # fmt: skip
        """Run one request; its stdout, or a CoordinatorError with labgrid's message."""
        argv = self.argv(*args, place=place)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=self.env(extra_env),
                                  stdin=subprocess.DEVNULL)  # fmt: skip
        except subprocess.TimeoutExpired:
            raise CoordinatorError(f"labgrid-client {' '.join(args)} got no answer within {timeout:g} s "
                                   f"from the coordinator {self.where}") from None  # fmt: skip
        if done.returncode != 0:
            said = _said(done.stdout + done.stderr)
            raise CoordinatorError(f"labgrid-client {' '.join(args)}{f' (place {place})' if place else ''} "
                                   f"failed at {self.where}: {said}", said)  # fmt: skip
        return done.stdout

    @property
    def where(self) -> str:
        return self.coordinator or "127.0.0.1:20408 (labgrid's default; set LG_COORDINATOR)"

    # --- reading the farm ----------------------------------------------------------------------------------
    def places(self) -> list[Place]:
        """Every place with its tags, holder and reservation (``labgrid-client -v places``: one request)."""
        return parse_places(self.call("-v", "places"))

    def show(self, place: str, *, token: str | None = None) -> Place:
        """One place with its resources' parameters (``-p PLACE show``, or ``-p +`` for a reservation)."""
        extra = {"LG_TOKEN": token} if token else None
        shown = parse_places(self.call("show", place=place, extra_env=extra))
        if len(shown) != 1:
            raise CoordinatorError(f"labgrid-client show {place} printed {len(shown)} places, not one")
        return shown[0]

    def reservations(self) -> dict[str, str]:
        """Every reservation's token -> its owner (``HOST/USER``)."""
        found: dict[str, str] = {}
        token = None
        for line in self.call("reservations").splitlines():
            head = re.match(r"Reservation '(?P<token>[^']+)':\Z", line.strip())
            if head is not None:
                token = head["token"]
            elif token is not None and line.strip().startswith("owner: "):
                found[token] = line.strip()[len("owner: ") :]
        return found

    # --- leases --------------------------------------------------------------------------------------------
    def reserve(self, selector: Mapping[str, str], wait: float) -> str:
        """A reservation for a place matching ``selector``, waited for up to ``wait`` seconds; its token.

        ``reserve --wait --shell`` prints the token at once and returns when the coordinator allocated a place;
        a reservation still waiting at the limit is cancelled, so it never takes a board after we gave up."""
        from mali_hil.harness.farm.failures import ReservationTimeout

        filters = [f"{key}={value}" for key, value in selector.items()]
        proc = subprocess.Popen(self.argv("reserve", "--wait", "--shell", *filters), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                env=self.env())  # fmt: skip
        token = None
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            found = _TOKEN.match(line.strip())
            if found is None:
                proc.wait(CALL_TIMEOUT)
                said = _said(line + proc.stdout.read() + (proc.stderr.read() if proc.stderr else ""))
                raise CoordinatorError(f"labgrid-client reserve {' '.join(filters)} failed at {self.where}: {said}",
                                       said)  # fmt: skip
            token = found["token"]
            try:
                code = proc.wait(wait)
            except subprocess.TimeoutExpired:
                raise ReservationTimeout(
                    f"no place matching {' '.join(filters)} became free within {wait:g} s at {self.where} "
                    "(every match is locked or reserved by other runs, or none exists): the run does not share "
                    "a busy board; raise the wait limit or free the board"
                ) from None
            if code != 0:
                said = _said(proc.stdout.read() + (proc.stderr.read() if proc.stderr else ""))
                raise CoordinatorError(f"waiting for reservation {token} failed at {self.where}: {said}", said)
            done_token, token = token, None  # allocated: the caller owns it now
            return done_token
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
            if token is not None:
                self.cancel(token)

    def cancel(self, token: str) -> bool:
        """Cancel a reservation; False when it was gone already (expired, or the coordinator restarted)."""
        try:
            self.call("cancel-reservation", token)
        except CoordinatorError as exc:
            if "does not exist" not in exc.output:
                raise
            return False
        return True

    def lock(self, place: str, token: str | None = None) -> None:
        self.call("lock", place=place if token is None else "+", extra_env={"LG_TOKEN": token} if token else None)

    def release(self, place: str) -> None:
        self.call("release", place=place)

    def release_from(self, place: str, holder: str, token: str | None = None) -> None:
        """Release ``place`` (``+``: the reservation ``token``'s) only if ``holder`` holds it (atomically, in the
        coordinator); a place nobody holds any more is fine."""
        try:
            self.call("release-from", holder, place=place, extra_env={"LG_TOKEN": token} if token else None)
        except CoordinatorError as exc:
            if "is not acquired" not in exc.output:
                raise

    # --- a place's own data (persisted by the coordinator across restarts, unlike locks) -------------------------
    def set_tags(self, place: str, tags: Mapping[str, str]) -> None:
        """Set (or, with an empty value, delete) tags of ``place``."""
        self.call("set-tags", *(f"{key}={value}" for key, value in tags.items()), place=place)

    def set_comment(self, place: str, comment: str) -> None:
        """Replace ``place``'s comment (one line: labgrid prints it on one)."""
        self.call("set-comment", "--", " ".join(comment.split()) or "", place=place)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Return once the coordinator answers (used after starting or restarting one)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.call("places", timeout=10)
                return
            except CoordinatorError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)


def parse_places(text: str) -> list[Place]:
    """Read ``-v places`` or ``show`` output: ``Place 'NAME':`` blocks of ``  key: value`` lines, then for
    ``show`` each resource as ``Matching resource 'CLS' (PATH):`` and a Python dict literal."""
    places: list[Place] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        head = _PLACE.match(line.strip()) if not line.startswith("    ") else None
        resource = _RESOURCE.match(line.strip())
        if head is not None:
            places.append(Place(head["name"]))
        elif resource is not None and places:
            block = []
            i += 1
            while i < len(lines) and lines[i].startswith("  "):
                block.append(lines[i])
                i += 1
            try:
                data = ast.literal_eval("\n".join(part.strip() for part in block))
            except (ValueError, SyntaxError) as exc:
                raise CoordinatorError(f"cannot read resource {resource['path']} in labgrid-client's output: "
                                       f"{exc}", "\n".join(block)) from None  # fmt: skip
            params = data.get("params", {}) if isinstance(data, dict) else {}
            places[-1].resources[str(data.get("cls", resource["name"]))] = dict(params)
            continue
        elif places and line.startswith("  ") and not line.startswith("    "):
            key, _, value = line.strip().partition(": ")
            if key == "tags":
                places[-1].tags = dict(pair.split("=", 1) for pair in value.split(", ") if "=" in pair)
            elif key == "acquired":
                places[-1].acquired = None if value == "None" else value
            elif key == "reservation":
                places[-1].reservation = value or None
            elif key == "comment":
                places[-1].comment = value
        i += 1
    return places


def parse_selector(text: str) -> dict[str, str]:
    """``PLACE`` -> ``{name: PLACE}``; ``gpu=mali-g610,board=rock5b`` -> those tags (labgrid's filters)."""
    if not text or any(ch in text for ch in " \t\n\0/"):
        raise PlaceError(f"{text!r} is not a place name or TAG=VALUE[,TAG=VALUE] (no spaces or '/')")
    if "=" not in text:
        return {"name": text}
    selector: dict[str, str] = {}
    for pair in text.split(","):
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[a-z][a-z0-9_]+", key) or not value:
            raise PlaceError(f"{pair!r} in {text!r} is not TAG=VALUE (a tag is lowercase letters, digits and '_', "
                             "at least two characters, as labgrid requires)")  # fmt: skip
        selector[key] = value
    return selector


def _said(output: str) -> str:
    """labgrid-client's own message, without its log prefixes; the last lines are what it says went wrong."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    return " | ".join(lines[-3:])[-800:] or "no output"
