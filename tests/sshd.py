"""A real OpenSSH server on 127.0.0.1 standing in for a board: its own port, generated host and user keys, its
own known_hosts and an ssh config with an alias, so the client side is configured exactly as a user would.

Not a mock of SSH: every byte goes through the system's ``sshd`` and ``ssh``. What it stands in for is the board
behind it (this machine, running the emulated Mali with ``emulate=``). Used by the tests and the benchmarks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def sshd_available() -> str | None:
    """None when a loopback sshd can run here, else why not (for a skip reason)."""
    if not Path(SSHD).is_file():
        return f"no sshd binary at {SSHD} (apt-get install openssh-server)"
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        return "no OpenSSH client (apt-get install openssh-client)"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def board_python() -> str:
    """The Python a board has: the interpreter our venv was made from (a venv's own python would leak its
    packages into the board's fresh venv through nothing, but it is not what a board has)."""
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    return str(base if base.exists() else Path(sys.base_prefix) / "bin" / "python3")


class LoopbackBoard:
    """``start()`` an sshd for ``name`` under ``root``; ``url(...)`` is the ``--device`` value that reaches it."""

    def __init__(
        self, root: Path, name: str = "board", *, sftp: bool = True, session_env: dict[str, str] | None = None
    ) -> None:
        """``sftp=False`` plays a board without an SFTP subsystem (dropbear, minimal images); ``session_env`` is
        set in every session (sshd's SetEnv), as a board's own profile would set it."""
        self.root, self.name = root, name
        self.alias = f"mali-hil-{name}"
        self.port = _free_port()
        self.workdir = root / "board-workdir"
        self._proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        self._keygen(root / "host_key")
        self._keygen(root / "user_key")
        (root / "authorized_keys").write_text((root / "user_key.pub").read_text())
        (root / "authorized_keys").chmod(0o600)
        self.known_hosts = root / "known_hosts"
        self.trust_host_key()
        self.ssh_config = root / "ssh_config"
        self.ssh_config.write_text(
            f"Host {self.alias}\n"
            f"  HostName 127.0.0.1\n  Port {self.port}\n  User {_user()}\n"
            f"  IdentityFile {root / 'user_key'}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.known_hosts}\n  GlobalKnownHostsFile /dev/null\n"
        )
        (root / "sshd_config").write_text(
            f"ListenAddress 127.0.0.1\nPort {self.port}\nHostKey {root / 'host_key'}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\nPidFile {root / 'sshd.pid'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "PermitRootLogin prohibit-password\nLogLevel ERROR\n"
            + ("Subsystem sftp internal-sftp\n" if sftp else "")
            + "".join(f"SetEnv {key}={value}\n" for key, value in (session_env or {}).items())
        )

    def set_env(self, name: str, value: str) -> None:
        """Every session on this board gets ``name=value`` (sshd's own ``SetEnv``), before ``start()``."""
        with open(self.root / "sshd_config", "a", encoding="utf-8") as config:
            config.write(f"SetEnv {name}={value}\n")

    @staticmethod
    def _keygen(path: Path) -> None:
        if not path.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True,
                           capture_output=True)  # fmt: skip

    def trust_host_key(self, key_file: Path | None = None) -> None:
        """Write ``known_hosts`` with this board's host key (or another key, to play a changed one)."""
        key = (key_file or self.root / "host_key.pub").read_text().split()[:2]
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {' '.join(key)}\n")

    def start(self, timeout: float = 20.0) -> LoopbackBoard:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation folder
        with open(self.root / "sshd.log", "ab") as log:
            argv = [SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")]
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.root / 'sshd.log').read_text()[-1000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"sshd on port {self.port} did not listen within {timeout:g} s")

    def stop(self) -> None:
        """Stop the server and every session it serves (their connections drop, as a board's would)."""
        if self._proc is None:
            return
        # sshd's own per-connection processes (found before the listener dies and they are reparented to init);
        # what runs in the sessions is left to notice the dropped connection, as on a board whose sshd died
        sessions = [pid for pid in _children(self._proc.pid) if _comm(pid) == "sshd"]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        for pid in sessions:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._proc.wait()
        self._proc = None

    def url(self, **options: str) -> str:
        query = {"ssh_config": str(self.ssh_config), "workdir": str(self.workdir), "python": board_python(),
                 **options}  # fmt: skip
        return f"ssh://{self.alias}?{urlencode(query, safe='/:')}"

    def board_processes(self) -> list[str]:
        """Command lines of processes that run from the board's work folder (its venv's python)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    if str(self.workdir) in cmdline:
                        found.append(f"{entry.name}: {cmdline.strip()}")
        return found


@contextlib.contextmanager
def running_board(root: Path, name: str, workdir: Path, **options: Any) -> Iterator[LoopbackBoard]:
    """A started board whose work folder is ``workdir`` (shared by a session's boards), stopped after."""
    server = LoopbackBoard(root, name, **options)
    server.workdir = workdir
    server.start()
    try:
        yield server
    finally:
        server.stop()


def watch_workers(board: LoopbackBoard, done: threading.Event, seen: list[int]) -> None:
    """Until ``done``: append how many workers of ours run on ``board`` at once, every 50 ms. Each worker runs
    under one board-side supervisor (``mali_hil.runtime.remote supervise``) below the board's sshd."""
    assert board._proc is not None
    while not done.is_set():
        tree = _children(board._proc.pid)
        seen.append(sum(1 for pid in tree if b"mali_hil.runtime.remote\0supervise" in _cmdline(pid)))
        time.sleep(0.05)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (sshd's per-connection processes start sessions of their own)."""
    table: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
                table.setdefault(ppid, []).append(int(entry.name))
    found, frontier = [], [pid]
    while frontier:
        for kid in table.get(frontier.pop(), []):
            found.append(kid)
            frontier.append(kid)
    return found
