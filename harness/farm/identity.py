"""Who holds a lock: one identity per run, from which the janitor can tell, on the same host, whether it is gone.

labgrid names a lock holder ``HOST/USER`` (``LG_HOSTNAME``/``LG_USERNAME``). A run locks as
``HOST/mali-hil.USER.BOOT.PID.START``: the host, the Unix user, this boot (the first 8 hex digits of the kernel's
boot id), the process id and the process's start time in clock ticks since boot (``/proc/PID/stat`` field 22).
A pid alone is reused; the pair (pid, start time) in one boot is not, so "that process still runs" is a fact the
janitor can check, not a guess from a lock's age.
"""

from __future__ import annotations

import getpass
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

PREFIX = "mali-hil"
_USERNAME = re.compile(rf"{PREFIX}\.(?P<user>[^./]+)\.(?P<boot>[0-9a-f]{{8}})\.(?P<pid>\d+)\.(?P<start>\d+)\Z")


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:8]
    except OSError:
        return "00000000"


def start_ticks(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot; None when no such process exists."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: count fields after its last ')'
    return int(stat[stat.rfind(")") + 2 :].split()[19])


def hostname() -> str:
    return os.environ.get("MALI_HIL_LG_HOSTNAME") or socket.gethostname()


@dataclass(frozen=True)
class RunIdentity:
    host: str
    user: str
    boot: str
    pid: int
    start: int

    @classmethod
    def of_process(cls, pid: int | None = None) -> RunIdentity:
        pid = os.getpid() if pid is None else pid
        start = start_ticks(pid)
        if start is None:
            raise ProcessLookupError(pid)
        user = re.sub(r"[^A-Za-z0-9_-]", "_", getpass.getuser())
        return cls(hostname(), user, boot_id(), pid, start)

    @property
    def username(self) -> str:
        """``LG_USERNAME``: what labgrid shows as the lock's user."""
        return f"{PREFIX}.{self.user}.{self.boot}.{self.pid}.{self.start}"

    @property
    def holder(self) -> str:
        """``HOST/USER``, as labgrid writes a place's ``acquired`` and ``release-from`` takes it."""
        return f"{self.host}/{self.username}"

    def env(self) -> dict[str, str]:
        return {"LG_HOSTNAME": self.host, "LG_USERNAME": self.username}

    @classmethod
    def parse(cls, holder: str) -> RunIdentity | None:
        """The identity in a lock holder ``HOST/USER``; None for a lock that is not a mali-hil run's."""
        host, _, user = holder.partition("/")
        found = _USERNAME.match(user)
        if not host or found is None:
            return None
        return cls(host, found["user"], found["boot"], int(found["pid"]), int(found["start"]))

    def liveness(self) -> str:
        """``alive``, ``gone`` or ``elsewhere`` (held from another host: nothing here can tell)."""
        if self.host != hostname():
            return "elsewhere"
        if self.boot != boot_id():
            return "gone"  # this host rebooted since: no process of that boot runs
        return "alive" if start_ticks(self.pid) == self.start else "gone"
