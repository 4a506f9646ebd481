"""A real headless Chromium, driven over the DevTools protocol on a pipe, to check a page as a user would see it.

Why the protocol on a pipe (``--remote-debugging-pipe``, what Playwright itself uses by default): it reports
console messages with their level, uncaught exceptions and failed resource loads as typed events, which
``--enable-logging=stderr`` cannot (it logs every console level alike and no failed loads); and it needs no
websocket client, no port and no Node.js. Messages are JSON, NUL-terminated, commands on fd 3, replies on fd 4.

Not a mock: the page is laid out and scripted by Debian's ``chromium``; what it stands in for is a person's browser.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--remote-debugging-pipe",
)


def chromium_available() -> str | None:
    return None if Path(CHROMIUM).is_file() else f"no chromium at {CHROMIUM} (apt-get install chromium)"


@dataclass
class PageCheck:
    problems: list[str] = field(default_factory=list)  # console errors/warnings, exceptions, failed loads
    values: dict[str, Any] = field(default_factory=dict)  # results of the expressions asked for
    screenshot: bytes = b""


class Browser:
    def __init__(self, profile: Path, timeout: float = 60.0) -> None:
        self.timeout = timeout
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # the child's ends move above 9 first, so putting them on 3 and 4 cannot overwrite one with the other
        to_chrome_r, from_chrome_w = (_above_9(fd) for fd in (to_chrome_r, from_chrome_w))
        # bash only moves the pipe ends to fds 3 and 4, where --remote-debugging-pipe expects them, then execs
        argv = [
            "/bin/bash",  # not dash: dash takes single-digit fds only
            "-c",
            f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w}',
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={profile}",
            "--window-size=1280,900",
            "about:blank",
        ]
        self.log = profile.with_name(profile.name + ".log")  # chromium's own stderr, for when it fails
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                argv, pass_fds=(to_chrome_r, from_chrome_w), stdout=log, stderr=log, start_new_session=True
            )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next = 0
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError, TimeoutError, RuntimeError):
                self.send("Browser.close")
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        for fd in (self._to_chrome, self._from_chrome):
            with contextlib.suppress(OSError):
                os.close(fd)

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        try:
            os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise RuntimeError(f"chromium is gone (exit {self.process.poll()}): {self._log_tail()}") from None
        while True:
            reply = self._receive()
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict[str, Any]:
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        while True:
            event = self._receive()
            if event.get("method") == method:
                return event
            self.events.append(event)

    def _receive(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise TimeoutError(f"chromium said nothing for {self.timeout} s")
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium closed its pipe (exit {self.process.poll()}): {self._log_tail()}")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def check(self, url: str, expressions: dict[str, str]) -> PageCheck:
        """Open ``url`` in a new tab, wait for its load event, evaluate ``expressions``, take a full-page
        screenshot, and collect every console error or warning, uncaught exception and failed load."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session)
        self.events.clear()
        self.send("Page.navigate", session, url=url)
        self.wait_for("Page.loadEventFired")
        result = PageCheck()
        for name, expression in expressions.items():
            value = self.send("Runtime.evaluate", session, expression=expression, returnByValue=True)
            result.values[name] = value.get("result", {}).get("value")
        shot = self.send("Page.captureScreenshot", session, format="png", captureBeyondViewport=True)
        result.screenshot = base64.b64decode(shot["data"])
        self.send("Runtime.evaluate", session, expression="0")  # flush events raised meanwhile
        for event in self.events:
            params = event.get("params", {})
            method = event.get("method")
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                result.problems.append(f"console.{params['type']}: {text}")
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                result.problems.append(f"exception: {details.get('exception', {}).get('description') or details}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
                entry = params["entry"]
                result.problems.append(f"log.{entry['level']}: {entry.get('text')} {entry.get('url', '')}".strip())
        self.send("Target.closeTarget", targetId=target)
        return result


def _above_9(fd: int) -> int:
    import fcntl

    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved
