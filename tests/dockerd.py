"""A real Docker engine for the tests and benchmarks: the running one, or Debian's ``dockerd`` started here.

Started only when none answers, as root, in the background with its log in a private file; stopped again only by
whoever started it, so a machine's own engine is left as it was found. ``engine_problem()`` says why no engine
can be had (for a skip reason) after trying; a started engine must also run a container, or it counts as none.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

SOCKET = Path("/var/run/docker.sock")


def _answers() -> bool:
    try:
        from mali_hil.emulator.image import docker_client

        docker_client().close()
        return True
    except Exception:  # DockerError, or the SDK missing: no engine for us either way
        return False


class Engine:
    """``start()`` makes an engine answer (starting ``dockerd`` when needed); ``stop()`` ends only ours."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.log: Path | None = None
        self.problem: str | None = None

    def start(self, timeout: float = 60.0) -> Engine:
        if _answers():
            return self
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            self.problem = "no Docker engine answers and there is no dockerd (apt-get install docker.io)"
            return self
        if os.geteuid() != 0:
            self.problem = "no Docker engine answers, and starting dockerd needs root"
            return self
        self.log = Path(tempfile.mkstemp(prefix="mali-hil-dockerd-", suffix=".log")[1])
        with self.log.open("wb") as log:
            self.process = subprocess.Popen([dockerd], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            if _answers():
                return self
            time.sleep(0.5)
        tail = self.log.read_text(errors="replace")[-1500:]
        self.stop()
        self.problem = f"dockerd did not come up within {timeout:g} s: {tail}"
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)  # dockerd stops its containerd and containers itself
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None
