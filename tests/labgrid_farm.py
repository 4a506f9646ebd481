"""A real labgrid farm on 127.0.0.1 for the tests and benchmarks: ``labgrid-coordinator`` and ``labgrid-exporter``
processes on free ports, exporting boards that are real local sshds (:class:`tests.sshd.LoopbackBoard`) as
``NetworkService`` resources, with places created and tagged through ``labgrid-client``, as an admin would.

The boards' client side is one ssh_config (each board's user key, every host key in one known_hosts file): host key
checking stays on. What stands in for a physical Mali is the emulated one the SSH device runs (``emulate=``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.sshd import LoopbackBoard, _user

BIN = Path(sys.executable).parent


def labgrid_available() -> str | None:
    if not (BIN / "labgrid-coordinator").exists():
        return "labgrid is not installed in this environment (pip install -e '.[farm]')"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LabgridFarm:
    """``start()`` a coordinator and an exporter for ``boards`` (name -> LoopbackBoard) under ``root``."""

    def __init__(self, root: Path, boards: dict[str, LoopbackBoard]) -> None:
        self.root, self.boards = root, boards
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, "LG_COORDINATOR": self.address, "GRPC_ENABLE_FORK_SUPPORT": "0"}
        self.env.pop("LG_TOKEN", None)
        self._coordinator: subprocess.Popen[bytes] | None = None
        self._exporter: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        self.exports = root / "exports.yaml"
        self.exports.write_text("".join(
            f"{name}:\n  NetworkService:\n    address: 127.0.0.1\n    username: {_user()}\n    port: {board.port}\n"
            for name, board in boards.items()
        ))  # fmt: skip
        self.known_hosts = root / "known_hosts"
        self.known_hosts.write_text("".join(board.known_hosts.read_text() for board in boards.values()))
        self.ssh_config = root / "ssh_config"
        keys = "".join(f"  IdentityFile {board.root / 'user_key'}\n" for board in boards.values())
        hosts = f"  UserKnownHostsFile {self.known_hosts}\n  GlobalKnownHostsFile /dev/null\n"
        self.ssh_config.write_text(f"Host 127.0.0.1\n{keys}  IdentitiesOnly yes\n{hosts}")

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - the process owns it until it ends
        with log:
            return subprocess.Popen(argv, cwd=self.root, env=self.env, stdout=log, stderr=log,
                                    stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip

    def start_coordinator(self) -> None:
        self._coordinator = self._spawn("coordinator", [str(BIN / "labgrid-coordinator"), "-l", self.address])
        self.wait_ready()

    def start_exporter(self) -> None:
        self._exporter = self._spawn("exporter", [str(BIN / "labgrid-exporter"), "-c", self.address, "-n", "farm",
                                                  "--hostname", "127.0.0.1", str(self.exports)])  # fmt: skip
        deadline = time.monotonic() + 30
        while len(self.client("resources").split()) < len(self.boards):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the exporter did not register: {(self.root / 'exporter.log').read_text()[-800:]}")
            time.sleep(0.3)

    def start(self, tags: dict[str, dict[str, str]]) -> LabgridFarm:
        """Places as the coordinator keeps them (its places.yaml, read at start: what ``labgrid-client create``,
        ``add-match`` and ``set-tags`` would write, without a dozen requests), then the coordinator and exporter."""
        (self.root / "places.yaml").write_text("".join(
            f"{name}:\n  matches:\n  - {{exporter: farm, group: {name}, cls: NetworkService}}\n"
            f"  tags: {{{', '.join(f'{k}: {v}' for k, v in tags.get(name, {}).items())}}}\n"
            for name in self.boards
        ))  # fmt: skip
        self.start_coordinator()
        self.start_exporter()
        return self

    def client(self, *args: str, place: str | None = None, env: dict[str, str] | None = None) -> str:
        argv = [str(BIN / "labgrid-client"), "-x", self.address, *(["-p", place] if place else []), *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env={**self.env, **(env or {})},
                              stdin=subprocess.DEVNULL)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"labgrid-client {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.client("places")
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"no coordinator: {(self.root / 'coordinator.log').read_text()[-800:]}")
            time.sleep(0.2)

    def holder(self, place: str) -> str | None:
        for line in self.client("show", place=place).splitlines():
            if line.strip().startswith("acquired:"):
                value = line.split(":", 1)[1].strip()
                return None if value == "None" else value
        return None

    def stop_coordinator(self) -> None:
        _stop(self._coordinator)
        self._coordinator = None

    def stop(self) -> None:
        _stop(self._exporter)
        self.stop_coordinator()
        self._exporter = None


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
