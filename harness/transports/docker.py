"""A container as the board: the worker runs in the emulator image, its RAM is the container's memory limit.

Through the Docker SDK for Python (imported on first use, never at plugin import). Each worker gets a container
of its own: ``mem_limit`` = the board's RAM and ``memswap_limit`` the same (no swap beyond it), no network, the
checkpoints read-only. The job protocol goes over the container's attached stdin/stdout (one hijacked
connection, stdout and stderr framed by the engine); in the container the same board-side supervisor as on an
SSH board (:mod:`.remote`) runs the worker and says how it ended, and the engine's own ``OOMKilled`` for the
container is the evidence of an OOM kill by its memory cgroup.

Containers are removed on every exit path: by the channel's end, at interpreter exit for any still open, and,
for a harness that was killed outright, by the next transport, which removes the containers of runs whose
process is gone (they carry the owner's host, pid and start time as labels). A harness that dies also closes
the attach connection; the container's stdin then ends and the supervisor kills the worker at once.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from mali_hil.harness.transports.base import Channel, RelayedChannel, StderrFile, Transport
from mali_hil.runtime.ram import Enforcement, RamVerdict
from mali_hil.runtime.remote import KILL_OP
from mali_hil.runtime.supervisor import ProcessEnd
from mali_hil.runtime.verdict import Evidence, OomEvidence

IMAGE_ENV = "MALI_HIL_DOCKER_IMAGE"
IMAGE_PYTHON = "/opt/mali-hil/bin/python"
CHECKPOINTS = "/mali-hil/checkpoints"  # where the checkpoints appear in the container (read-only)
OWNER_LABEL = "mali-hil.owner"  # host/pid/start-ticks of the harness process that made the container
_STDOUT, _STDERR = 1, 2


def _start_ticks(pid: int) -> str | None:
    """A process's start time (clock ticks after boot): with its pid, names it even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def owner_label() -> str:
    return f"{socket.gethostname()}/{os.getpid()}/{_start_ticks(os.getpid())}"


def remove_stale_containers(client: Any) -> list[str]:
    """Remove the containers of mali-hil runs on this host whose harness process is gone; returns their names."""
    removed = []
    for container in client.containers.list(all=True, filters={"label": OWNER_LABEL}):
        host, _, rest = container.labels.get(OWNER_LABEL, "").partition("/")
        pid, _, ticks = rest.partition("/")
        if host != socket.gethostname() or not pid.isdigit():
            continue
        if _start_ticks(int(pid)) == ticks:
            continue  # its harness is alive (this one, or another run beside it)
        with contextlib.suppress(Exception):  # gone meanwhile, or being removed by its engine
            container.remove(force=True)
            removed.append(container.name)
    return removed


_open_channels: weakref.WeakSet[DockerChannel] = weakref.WeakSet()


@atexit.register
def _remove_open_containers() -> None:
    for channel in list(_open_channels):
        channel.remove()


class DockerTransport(Transport):
    """Workers in containers of the emulator image, each within the board's RAM as its memory limit."""

    def __init__(self, image: str | None = None) -> None:
        self._image = image or os.environ.get(IMAGE_ENV) or None
        self._client: Any = None
        self._staging = Path(tempfile.mkdtemp(prefix="mali-hil-docker-"))  # mounted read-only at CHECKPOINTS
        self._lock = threading.Lock()
        self.stale_removed: list[str] = []

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                from mali_hil.emulator.image import docker_client

                self._client = docker_client()
                self.stale_removed = remove_stale_containers(self._client)
            return self._client

    def image(self) -> str:
        if self._image is None:
            from mali_hil.emulator.image import DockerError, find_image, running_build

            build = running_build()
            found = find_image(self.client(), build)
            if found is None:
                raise DockerError(f"no emulator image of this mali-hil ({build}) in the engine: run "
                                  f"`mali-hil emulator build-image` (or set {IMAGE_ENV})")  # fmt: skip
            self._image = found
        return self._image

    def enforcement(self, ram_budget: int | None) -> Enforcement:
        return Enforcement.KERNEL if ram_budget is None else Enforcement.CONTAINER

    def python(self) -> Sequence[str]:
        return (IMAGE_PYTHON,)

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], *, ram_budget: int | None) -> Channel:
        client, image = self.client(), self.image()
        command = ([] if ram_budget is None else ["--ram-budget", str(ram_budget)]) + ["--", *argv]
        limits = {} if ram_budget is None else {"mem_limit": ram_budget, "memswap_limit": ram_budget}
        try:
            # the low-level call, not detached with stdin open: that sets StdinOnce, so the engine closes the
            # container's stdin when the attach connection ends (and a dead harness's worker ends with it)
            host = client.api.create_host_config(network_mode="none", binds={str(self._staging): {
                "bind": CHECKPOINTS, "mode": "ro"}}, **limits)  # fmt: skip
            made = client.api.create_container(image, command, environment=dict(env), stdin_open=True,
                                               detach=False, tty=False, labels={OWNER_LABEL: owner_label()},
                                               host_config=host)  # fmt: skip
            container = client.containers.get(made["Id"])
        except Exception as exc:  # the SDK's APIError and requests' errors: the engine's own words
            from mali_hil.emulator.image import DockerError

            raise DockerError(f"cannot create a container of {image}: {exc}") from None
        return DockerChannel(client, container)

    def place(self, path: Path) -> str:
        """Hard-link (or copy, across file systems) the checkpoint's files into the folder every container sees
        read-only, under a name made of their paths, sizes and modification times."""
        from mali_hil.harness.checkpoints.index import checkpoint_files

        files = checkpoint_files(Path(path))
        if not files:
            return f"{CHECKPOINTS}/absent/{Path(path).name}"
        key = hashlib.sha256()
        for file in files:
            stat = file.stat()
            key.update(f"{file.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        folder = self._staging / key.hexdigest()[:32]
        with self._lock:
            if not folder.is_dir():
                staging = Path(tempfile.mkdtemp(dir=self._staging, prefix=".tmp-"))
                for file in files:
                    try:
                        os.link(file, staging / file.name)
                    except OSError:
                        shutil.copy2(file, staging / file.name)
                staging.chmod(0o755)
                staging.rename(folder)
        return f"{CHECKPOINTS}/{folder.name}/{Path(path).name}"

    def close(self) -> None:
        shutil.rmtree(self._staging, ignore_errors=True)
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()


class DockerChannel(RelayedChannel):
    """The supervisor in the container, through the engine's attach connection (stdin in; stdout and stderr out,
    each frame headed by its stream and length)."""

    def __init__(self, client: Any, container: Any) -> None:
        self._client, self._container = client, container
        self._stderr = StderrFile()
        self._started = time.monotonic()
        self._removed = False
        _open_channels.add(self)
        try:
            raw = client.api.attach_socket(container.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
            self._socket: socket.socket = getattr(raw, "_sock", raw)
            self._raw = raw  # keeps the HTTP response (and so the connection) alive
            container.start()
        except Exception as exc:
            self.remove()
            self._stderr.close()
            from mali_hil.emulator.image import DockerError

            raise DockerError(f"cannot start a container of {container.image}: {exc}") from None
        super().__init__()
        self._send_lock = threading.Lock()
        self._stdin_open = True
        self._reader = threading.Thread(target=self._read, name="mali-hil-docker-reader", daemon=True)
        self._reader.start()

    # --- the attach connection ---------------------------------------------------------------------------
    def _frames(self) -> Any:
        buffer = b""
        while True:
            try:
                chunk = self._socket.recv(1 << 16)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while len(buffer) >= 8:
                stream, size = buffer[0], struct.unpack(">I", buffer[4:8])[0]
                if len(buffer) < 8 + size:
                    break
                yield stream, buffer[8 : 8 + size]
                buffer = buffer[8 + size :]

    def _read(self) -> None:
        pending = b""
        for stream, data in self._frames():
            if stream == _STDERR:
                with contextlib.suppress(ValueError):  # closed by a late __del__
                    self._stderr.file.seek(0, os.SEEK_END)  # tail() may have moved the position
                    self._stderr.file.write(data)
                continue
            pending += data
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                self._take(raw.decode("utf-8", errors="replace"))
        if pending:
            self._take(pending.decode("utf-8", errors="replace"))
        self._deliver(None)

    def _stdin(self) -> IO[bytes] | None:
        raise AssertionError("a container's stdin is its attach socket: send() writes to it")

    def send(self, line: str) -> None:
        with self._send_lock:
            if not self._stdin_open:
                return
            with contextlib.suppress(OSError):  # the container is gone: receive() sees the end of its output
                self._socket.sendall(line.encode("utf-8") + b"\n")

    def _close_stdin(self) -> None:
        with self._send_lock:
            if self._stdin_open:
                self._stdin_open = False
                with contextlib.suppress(OSError):
                    self._socket.shutdown(socket.SHUT_WR)  # the engine closes the container's stdin (stdin_once)

    # --- the Channel protocol ------------------------------------------------------------------------------
    def memory(self) -> RamVerdict | None:
        return self._memory

    def kill(self) -> None:
        self.send(json.dumps({"op": KILL_OP}))

    def end(self, grace: float = 0.0) -> ProcessEnd:
        self._close_stdin()  # the supervisor ends its worker (at once, unless an exit was sent)
        self._reader.join(grace + 20.0)
        if self._reader.is_alive():
            with contextlib.suppress(Exception):
                self._container.kill()
            self._reader.join(10.0)
        state = self._final_state()
        self.remove()
        with contextlib.suppress(OSError):
            self._socket.close()
        end = self._end
        word = OomEvidence.CONTAINER if state.get("OOMKilled") else None  # the engine's word beats the supervisor's
        if end is not None:
            if word is None:
                return end
            return ProcessEnd.judged(end.evidence_of(word=word), end.max_rss_bytes, end.elapsed)
        elapsed = time.monotonic() - self._started
        code = state.get("ExitCode")
        if word is not None or (isinstance(code, int) and state.get("Status") == "exited"):
            code = code if isinstance(code, int) else 137
            returncode = -(code - 128) if code > 128 else code  # the engine says 137 where subprocess says -9
            return ProcessEnd.judged(Evidence(returncode=returncode, enforcer=self._memory, word=word), 0, elapsed)
        return ProcessEnd.lost(-1, self._memory, elapsed)  # the engine went away

    def _final_state(self) -> dict[str, Any]:
        try:
            self._container.wait(timeout=30)
            self._container.reload()
            return dict(self._container.attrs.get("State", {}))
        except Exception:  # the engine is gone or the container was removed: nothing known
            return {}

    def remove(self) -> None:
        """Remove the container (killing what runs in it); idempotent."""
        if self._removed:
            return
        self._removed = True
        _open_channels.discard(self)
        with contextlib.suppress(Exception):  # already gone (engine restarted, or removed by someone else)
            self._container.remove(force=True)

    def stderr_tail(self, limit: int = 4000) -> str:
        return self._stderr.tail(limit)

    def __del__(self) -> None:
        self._stderr.close()
