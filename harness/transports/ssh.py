"""A board over SSH, through the system's OpenSSH client: the user's ssh config, agent, ProxyJump and known_hosts
work as they do for ``ssh`` itself, and nothing OpenSSH already does is written here.

One connection per board is multiplexed (ControlMaster, ControlPersist) with keepalives and ``BatchMode``; host
key checking stays as the user configured it, and a refused key names the file to fix. On first use the board is
prepared: its Python checked, a venv per mali-hil build made (or reused) in its work folder with a wheel of the
running mali-hil, and its health checked. Checkpoints go to the board named by their content and are sent once.
Processes run under the remote supervisor (:mod:`.remote`), which judges how they ended on the board.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from mali_hil.errors import MaliHilError
from mali_hil.harness.transports.base import Channel, RelayedChannel, StderrFile, Transport
from mali_hil.harness.transports.ssh_target import SshTarget
from mali_hil.runtime.ram import Enforcement, RamVerdict
from mali_hil.runtime.remote import KILL_OP
from mali_hil.runtime.supervisor import ISOLATED, ProcessEnd
from mali_hil.wheel import build_running_wheel

REMOTE_MODULE = "mali_hil.runtime.remote"
MIN_PYTHON = (3, 11)
MIN_FREE_DISK = 512 << 20  # bytes the board's work folder must have free before it is used
MIN_FREE_RAM = 128 << 20  # bytes of MemAvailable below which a board is too loaded to measure anything
_TRANSIENT = ("Connection refused", "Connection timed out", "Connection reset", "Connection closed",
              "No route to host", "Network is unreachable", "kex_exchange_identification",
              "Operation timed out")  # fmt: skip
# what scp (which speaks SFTP since OpenSSH 9) and sftp say when the board's sshd has no SFTP subsystem (dropbear,
# minimal images): the bytes then go through the SSH channel itself
_NO_SFTP = ("subsystem request failed", "Connection closed")
SFTP, CHANNEL = "sftp", "ssh channel (cat)"


class SshError(MaliHilError, RuntimeError):
    """The board could not be reached or prepared over SSH; the message says what to fix."""


class HostKeyError(SshError):
    """OpenSSH refused the board's host key (unknown or changed): fixed in known_hosts, never bypassed."""


def _remote(argv: Sequence[str]) -> str:
    """The command line the board's login shell runs: every word quoted, so no value is ever shell syntax."""
    return " ".join(shlex.quote(str(word)) for word in argv)


class SshTransport(Transport):
    def __init__(self, target: SshTarget) -> None:
        self.target = target
        self._control = Path(tempfile.mkdtemp(prefix="mali-hil-ssh-"))  # 0700: the ControlPath socket lives here
        self._lock = threading.RLock()
        self._venv_python: str | None = None
        self.workdir: str | None = None
        self.health: dict[str, Any] = {}
        self._hashes: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha256, hashed once
        self._on_board: set[str] = set()  # checkpoint folders known to be on the board
        self.bootstrap_seconds: float | None = None
        self.installed = False  # whether this transport had to install mali-hil on the board
        self.sent_bytes = 0  # checkpoint bytes this transport copied to the board (0: it had them all)
        self.file_transfer: str | None = None  # SFTP or CHANNEL once a file went over; reports say which

    # --- OpenSSH ---------------------------------------------------------------------------------------------
    def ssh_options(self) -> list[str]:
        t = self.target
        options = ["-F", t.ssh_config] if t.ssh_config else []
        options += ["-o", "BatchMode=yes", "-o", "ControlMaster=auto", "-o", f"ControlPath={self._control}/%C",
                    "-o", "ControlPersist=300", "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3",
                    "-o", "ConnectTimeout=10"]  # fmt: skip
        if t.user:
            options += ["-o", f"User={t.user}"]
        if t.port:
            options += ["-o", f"Port={t.port}"]
        return options

    def ssh_argv(self, remote: Sequence[str]) -> list[str]:
        return ["ssh", *self.ssh_options(), "-T", "--", self.target.host, _remote(remote)]

    def run(self, remote: Sequence[str], *, timeout: float = 120.0, input_bytes: bytes | None = None,
            check: bool = True) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
        """Run one command on the board; raises SshError for what OpenSSH refused (exit 255) or, with
        ``check``, for a command that failed."""
        try:
            done = subprocess.run(self.ssh_argv(remote), input=input_bytes, capture_output=True, timeout=timeout,
                                  stdin=None if input_bytes is not None else subprocess.DEVNULL)  # fmt: skip
        except subprocess.TimeoutExpired:
            raise SshError(f"{self.target.destination}: `{_remote(remote)[:200]}` took over {timeout:g} s") from None
        except OSError as exc:
            raise SshError(f"cannot run the OpenSSH client (ssh): {exc}; apt-get install openssh-client") from None
        if done.returncode == 255:
            raise self._ssh_error(done.stderr.decode(errors="replace"))
        if check and done.returncode != 0:
            raise SshError(f"{self.target.destination}: `{_remote(remote)[:200]}` failed (exit {done.returncode}): "
                           f"{done.stderr.decode(errors='replace').strip()[-1500:]}")  # fmt: skip
        return done

    def _ssh_error(self, stderr: str) -> SshError:
        where, text = self.target.destination, stderr.strip()
        if "Host key verification failed" in text or "HOST IDENTIFICATION HAS CHANGED" in text:
            offending = [line for line in text.splitlines() if "Offending" in line or "known_hosts" in line]
            hint = "; ".join(offending[:2]) or "its key is not in your known_hosts (UserKnownHostsFile)"
            return HostKeyError(
                f"{where}: OpenSSH refused the board's host key ({hint}). Check the key with the board's owner, "
                f"then fix that known_hosts file (`ssh-keygen -R HOST -f FILE`, then connect once by hand): "
                f"mali-hil never turns host key checking off"
            )
        return SshError(f"{where}: ssh failed: {text[-1500:] or 'exit 255 without a message'}")

    def copy(self, local: Path, remote: str, timeout: float = 3600.0) -> None:
        """``scp`` through the same multiplexed connection (and so with the same host key checks); on a board
        without an SFTP subsystem, the bytes go through the SSH channel instead (:meth:`_stream`)."""
        t = self.target
        if self.file_transfer != CHANNEL:
            argv = ["scp", "-q", *self.ssh_options(), "--", str(local), f"{_scp_host(t.host)}:{shlex.quote(remote)}"]
            try:
                done = subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                raise SshError(f"{t.destination}: copying {local} took over {timeout:g} s") from None
            if done.returncode == 0:
                self.file_transfer = SFTP
                return
            stderr = done.stderr.decode(errors="replace")
            if not any(word in stderr for word in _NO_SFTP):
                raise SshError(f"{t.destination}: scp of {local} failed: {stderr[-800:]}")
            self.file_transfer = CHANNEL
        partial = f"{remote}.part-{secrets.token_hex(4)}"
        self._stream(local, partial, timeout)
        self.run(["mv", "-f", partial, remote])

    def _stream(self, local: Path, remote: str, timeout: float) -> None:
        """``cat > REMOTE`` on the board with the file on its stdin: needs nothing but a shell and the channel."""
        argv = self.ssh_argv(["sh", "-c", 'cat > "$1"', "sh", remote])
        try:
            with local.open("rb") as data:
                done = subprocess.run(argv, stdin=data, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SshError(f"{self.target.destination}: sending {local} took over {timeout:g} s") from None
        if done.returncode != 0:
            self.run(["rm", "-f", remote], check=False)
            raise SshError(f"{self.target.destination}: sending {local} over the SSH channel failed: "
                           f"{done.stderr.decode(errors='replace')[-800:]}")  # fmt: skip

    # --- connecting and preparing the board ----------------------------------------------------------------
    def connect(self) -> None:
        """Reach the board (retrying while it does not answer yet), prepare mali-hil there, check its health."""
        with self._lock:
            if self._venv_python is not None:
                return
            started = time.monotonic()
            facts = self._reach()
            self._bootstrap(facts)
            self._check_health()
            self.bootstrap_seconds = time.monotonic() - started

    def _reach(self) -> dict[str, Any]:
        code = ("import json, os, sys; print(json.dumps({'version': list(sys.version_info[:3]), "
                "'cache': os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache')}))")  # fmt: skip
        done = self._retrying([self.target.python, "-c", code])
        if done.returncode != 0:
            raise SshError(f"{self.target.destination}: the board has no Python at {self.target.python!r} "
                           f"({done.stderr.decode(errors='replace').strip()[-300:]}); give python=/path/to/python3.11 "
                           "in the device URL")  # fmt: skip
        facts = json.loads(done.stdout)
        if tuple(facts["version"][:2]) < MIN_PYTHON:
            found = ".".join(map(str, facts["version"]))
            raise SshError(f"{self.target.destination}: {self.target.python} is Python {found}; mali-hil needs "
                           ">= 3.11 (give python=/path/to/python3.11 in the device URL)")  # fmt: skip
        return facts

    def _retrying(self, remote: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        """Run ``remote`` once the board answers: a board that refuses or drops connections (booting, or its
        sshd restarting) is tried again with backoff until ``connect_timeout``; other refusals are final."""
        deadline = time.monotonic() + self.target.connect_timeout
        delay = 0.25
        while True:
            try:
                return self.run(remote, timeout=60, check=False)
            except HostKeyError:
                raise
            except SshError as exc:
                transient = any(word in str(exc) for word in _TRANSIENT)
                if not transient or time.monotonic() + delay > deadline:
                    raise SshError(f"{exc} (gave up after {self.target.connect_timeout:g} s)") from None
                time.sleep(delay)
                delay = min(delay * 2, 4.0)

    def _bootstrap(self, facts: dict[str, Any]) -> None:
        t = self.target
        self.workdir = t.workdir or f"{facts['cache']}/mali-hil"
        wheel = build_running_wheel(self._control / "wheel")
        venv = f"{self.workdir}/venvs/{wheel.name.split('-')[1]}"
        ready = self.run(["test", "-f", f"{venv}/.mali-hil-ready"], check=False).returncode == 0
        if not ready:
            self.installed = True
            staging = f"{venv}.tmp-{secrets.token_hex(4)}"
            self.run(["mkdir", "-p", f"{self.workdir}/wheels", f"{self.workdir}/venvs", f"{self.workdir}/tmp"])
            self.copy(wheel, f"{self.workdir}/wheels/{wheel.name}")
            pip = [f"{staging}/bin/python", "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            if t.wheelhouse:
                pip += ["--no-index", "--find-links", self._send_wheelhouse(Path(t.wheelhouse))]
            try:
                self.run([t.python, "-m", "venv", staging], timeout=300)
                self.run([*pip, f"{self.workdir}/wheels/{wheel.name}"], timeout=1800)
                self.run(["touch", f"{staging}/.mali-hil-ready"])
                # a venv runs from where it lies once its python is called directly; a racing installer's
                # finished venv wins, and ours goes
                self.run(["sh", "-c", 'mv -T "$1" "$2" 2>/dev/null || rm -rf "$1"', "sh", staging, venv])
            except SshError:
                self.run(["rm", "-rf", staging], check=False)
                raise
        self._venv_python = f"{venv}/bin/python"

    def _send_wheelhouse(self, folder: Path) -> str:
        remote = f"{self.workdir}/wheelhouse"
        self.run(["mkdir", "-p", remote])
        for wheel in sorted(folder.glob("*.whl")):
            self.copy(wheel, f"{remote}/{wheel.name}")
        return remote

    def _check_health(self) -> None:
        t = self.target
        assert self._venv_python is not None and self.workdir is not None
        argv = [self._venv_python, *ISOLATED, "-m", REMOTE_MODULE, "health", "--workdir", self.workdir]
        if t.emulate:
            argv += ["--emulate", t.emulate, "--ram-budget", str(self._emulated_budget())]
        done = self.run(argv, timeout=300)
        health = json.loads(done.stdout.decode().strip().splitlines()[-1])
        problems = []
        opencl = health.get("opencl", {})
        if "error" in opencl:
            problems.append(f"no usable OpenCL device: {opencl['error']}")
        if health.get("disk_free", 0) < MIN_FREE_DISK:
            problems.append(f"only {health.get('disk_free')} bytes free in {self.workdir}")
        if health.get("mem_available") is not None and health["mem_available"] < MIN_FREE_RAM:
            problems.append(f"only {health['mem_available']} bytes of RAM available")
        if t.expect and "error" not in opencl:
            from mali_hil.emulator.profile import load_profile

            family = load_profile(t.expect).name.split()[0]
            if family not in opencl.get("device_name", ""):
                problems.append(f"its OpenCL device is {opencl.get('device_name')!r}, not a {family} ({t.expect})")
        if problems:
            raise SshError(f"{t.destination} is not healthy: " + "; ".join(problems))
        self.health = health

    def _emulated_budget(self) -> int:
        from mali_hil.emulator.profile import load_profile

        assert self.target.emulate is not None
        return load_profile(self.target.emulate).job_budget()

    # --- the Transport protocol -----------------------------------------------------------------------------
    def enforcement(self, ram_budget: int | None) -> Enforcement:
        if ram_budget is None:
            return Enforcement.KERNEL
        return Enforcement(self.health.get("enforcement", Enforcement.WATCHDOG))

    def python(self) -> Sequence[str]:
        self.connect()
        assert self._venv_python is not None
        return (self._venv_python,)

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], *, ram_budget: int | None) -> Channel:
        self.connect()
        assert self._venv_python is not None and self.workdir is not None
        self._retrying(["true"])  # after a dropped connection the board may take a moment to answer again
        remote = [self._venv_python, *ISOLATED, "-m", REMOTE_MODULE, "supervise", "--workdir", self.workdir]
        if ram_budget is not None:
            remote += ["--ram-budget", str(ram_budget)]
        for key, value in env.items():
            remote += ["--env", f"{key}={value}"]
        return SshChannel(self.ssh_argv([*remote, "--", *argv]), self.target.destination)

    def place(self, path: Path) -> str:
        """Send the checkpoint (a file, or an index with its shards) to ``WORKDIR/checkpoints/<content hash>/``
        unless the board has it already; a path that is no file here is no file there either (the worker's
        validator says so, as it would locally)."""
        from mali_hil.harness.checkpoints.index import checkpoint_files

        self.connect()
        assert self.workdir is not None
        files = checkpoint_files(Path(path))
        if not files:
            return f"{self.workdir}/checkpoints/absent/{Path(path).name}"
        with self._lock:
            digest = self._content_hash(files)
            folder = f"{self.workdir}/checkpoints/{digest}"
            if digest not in self._on_board:
                if self.run(["test", "-d", folder], check=False).returncode != 0:
                    self._send(files, folder)
                self._on_board.add(digest)
        return f"{folder}/{Path(path).name}"

    def _content_hash(self, files: list[Path]) -> str:
        digest = hashlib.sha256()
        for file in files:
            stat = file.stat()
            key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
            if key not in self._hashes:
                self._hashes[key] = _sha256(file)
            digest.update(file.name.encode() + b"\0" + self._hashes[key].encode())
        return digest.hexdigest()[:32]

    def _send(self, files: list[Path], folder: str) -> None:
        """The files into a staging folder, then one rename: the folder appears whole or not at all (a racing
        sender's finished folder wins); SSH's own integrity check covers the bytes on the way. One sftp session,
        or, on a board without SFTP, one ``cat`` per file through the channel."""
        staging = f"{folder}.tmp-{secrets.token_hex(4)}"
        # on failure, a racing sender's folder may have won the rename: then ours goes and theirs serves
        cleanup = ["sh", "-c", 'rm -rf "$1"; test -d "$2"', "sh", staging, folder]
        failure = self._send_sftp(files, staging, folder) if self.file_transfer != CHANNEL else None
        if failure is not None and any(word in failure for word in _NO_SFTP):
            self.file_transfer = CHANNEL
        if self.file_transfer == CHANNEL:
            failure = None
            try:
                self.run(["mkdir", "-p", staging])
                for file in files:
                    self._stream(file, f"{staging}/{file.name}", 3600.0)
                self.run(["sh", "-c", 'mv -T "$1" "$2"', "sh", staging, folder])
            except SshError as exc:
                failure = str(exc)
        if failure is not None and self.run(cleanup, check=False).returncode != 0:
            raise SshError(f"{self.target.destination}: sending {files[0].name} failed: {failure[-800:]}")
        self.sent_bytes += sum(file.stat().st_size for file in files)

    def _send_sftp(self, files: list[Path], staging: str, folder: str) -> str | None:
        """One sftp session; None when it worked, else what sftp said."""
        commands = [f"-mkdir {_sftp_quote(str(Path(folder).parent))}", f"mkdir {_sftp_quote(staging)}"]
        commands += [f"put {_sftp_quote(str(file))} {_sftp_quote(f'{staging}/{file.name}')}" for file in files]
        commands.append(f"rename {_sftp_quote(staging)} {_sftp_quote(folder)}")
        argv = ["sftp", "-q", "-b", "-", *self.ssh_options(), "--", _scp_host(self.target.host)]
        try:
            done = subprocess.run(argv, input="\n".join(commands).encode(), capture_output=True, timeout=3600)
        except subprocess.TimeoutExpired:
            raise SshError(f"{self.target.destination}: sending {files[0].name} took over an hour") from None
        if done.returncode == 0:
            self.file_transfer = SFTP
            return None
        return f"sftp: {done.stderr.decode(errors='replace')}"

    def close(self) -> None:
        if self._control.exists():
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(["ssh", *self.ssh_options(), "-O", "exit", "--", self.target.host],
                               capture_output=True, timeout=10, stdin=subprocess.DEVNULL)  # fmt: skip
            shutil.rmtree(self._control, ignore_errors=True)


def _sftp_quote(path: str) -> str:
    """A path as one word of an sftp batch command (double quotes; backslash escapes quotes and itself)."""
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _scp_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        while chunk := data.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class SshChannel(RelayedChannel):
    """The remote supervisor's stdin/stdout through an ``ssh`` client process, in a session of its own."""

    def __init__(self, argv: list[str], destination: str) -> None:
        self._destination = destination
        self._stderr = StderrFile()
        self._started = time.monotonic()
        try:
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr.file,
                                          start_new_session=True)  # fmt: skip
        except OSError as exc:
            self._stderr.close()
            raise SshError(f"cannot run the OpenSSH client (ssh): {exc}") from None
        super().__init__()
        self._reader = threading.Thread(target=self._read, name="mali-hil-ssh-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for raw in self._proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            self._take(line)
        self._deliver(None)

    def _stdin(self) -> IO[bytes] | None:
        return self._proc.stdin

    def memory(self) -> RamVerdict | None:
        return self._memory

    def kill(self) -> None:
        self.send(json.dumps({"op": KILL_OP}))

    def end(self, grace: float = 0.0) -> ProcessEnd:
        stdin = self._proc.stdin
        if stdin is not None and not stdin.closed:
            with contextlib.suppress(OSError):
                stdin.close()  # the remote supervisor ends its worker (at once, unless an exit was sent)
        # the remote side needs the grace, then its own clean-up (up to ~15 s for a big process to unmap)
        self._reader.join(grace + 20.0)
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, 9)
        self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        if self._end is not None:
            return self._end
        return ProcessEnd.lost(self._proc.returncode, self._memory, time.monotonic() - self._started)

    def stderr_tail(self, limit: int = 4000) -> str:
        return self._stderr.tail(limit)

    def __del__(self) -> None:
        self._stderr.close()
