"""``ssh://[user@]host[:port][?option=value&...]``: a board over SSH, parsed and checked once, at the edge.

Host and user go to OpenSSH as arguments (after ``--``), never through a shell, and may not look like options;
every other value reaches the board only shell-quoted. A bare host may be an alias of the user's ssh config.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from mali_hil.errors import DeviceSpecError

_HOST = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]*)\Z")  # a name, an alias or an IPv4 address
_IPV6 = re.compile(r"[0-9A-Fa-f:.]+\Z")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\Z")
OPTIONS = {
    "python": "the board's Python (>= 3.11) that mali-hil's venv is made with (default python3)",
    "emulate": "run the emulated Mali PROFILE[:RAM] on the board instead of its own OpenCL device",
    "expect": "a profile the board's own OpenCL device must match (e.g. mali-g610)",
    "workdir": "absolute folder on the board for mali-hil's venvs, checkpoints and temporary files "
    "(default ~/.cache/mali-hil)",
    "ssh_config": "an ssh_config file for this board (as ssh -F); default: the user's own",
    "wheelhouse": "a local folder of wheels for the board's Python, for boards that cannot reach an index",
    "retries": "how often a job whose connection dropped is run again (default 2)",
    "connect_timeout": "seconds to keep retrying a board that does not answer yet, e.g. booting (default 30)",
}


@dataclass(frozen=True)
class SshTarget:
    host: str
    user: str | None = None
    port: int | None = None
    python: str = "python3"
    emulate: str | None = None
    expect: str | None = None
    workdir: str | None = None
    ssh_config: str | None = None
    wheelhouse: str | None = None
    retries: int = 2
    connect_timeout: float = 30.0

    @property
    def destination(self) -> str:
        """For messages: ``user@host:port`` as far as given."""
        who = f"{self.user}@" if self.user else ""
        return f"{who}{self.host}" + (f":{self.port}" if self.port else "")

    @classmethod
    def parse(cls, url: str) -> SshTarget:
        def bad(why: str) -> DeviceSpecError:
            return DeviceSpecError(f"device {url!r}: {why}")

        parts = urlsplit(url)
        if parts.scheme != "ssh" or parts.path not in ("", "/") or parts.fragment:
            raise bad("write ssh://[user@]host[:port][?option=value&...]")
        try:
            port = parts.port
        except ValueError:
            raise bad("the port must be a number from 1 to 65535") from None
        if parts.password is not None:
            raise bad("passwords do not belong in a device URL: use keys (ssh-agent, IdentityFile)")
        try:
            pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        except ValueError:
            raise bad("the options after '?' must be name=value pairs joined by '&'") from None
        options: dict[str, str] = {}
        for name, value in pairs:
            if name in options:
                raise bad(f"option {name!r} is given twice")
            options[name] = value
        return cls.of(parts.hostname or "", parts.username, port, options, url)

    @classmethod
    def of(cls, host: str, user: str | None, port: int | None, options: Mapping[str, str], where: str) -> SshTarget:
        """A board at ``host`` (``where`` names it in errors): the URL's parts, or a labgrid place's service."""

        def bad(why: str) -> DeviceSpecError:
            return DeviceSpecError(f"device {where!r}: {why}")

        if not (_HOST.match(host) or (":" in host and _IPV6.match(host))):
            raise bad(f"{host!r} is not a host name, address or ssh config alias")
        if user is not None and not _USER.match(user):
            raise bad(f"{user!r} is not a user name")
        if port is not None and not 0 < port < 65536:
            raise bad("the port must be a number from 1 to 65535")
        for name, value in options.items():
            if name not in OPTIONS:
                known = ", ".join(f"{k} ({v})" for k, v in OPTIONS.items())
                raise bad(f"unknown option {name!r}; known options: {known}")
            if not value or any(ch in value for ch in "\n\r\0"):
                raise bad(f"option {name!r} needs a value on one line")
        workdir = options.get("workdir")
        if workdir is not None and not workdir.startswith("/"):
            raise bad(f"workdir {workdir!r} must be an absolute path on the board")
        return cls(
            host=host,
            user=user,
            port=port,
            python=options.get("python", "python3"),
            emulate=options.get("emulate"),
            expect=options.get("expect"),
            workdir=workdir,
            ssh_config=options.get("ssh_config"),
            wheelhouse=options.get("wheelhouse"),
            retries=_number(options, "retries", int, 0, 20, 2, bad),
            connect_timeout=_number(options, "connect_timeout", float, 1.0, 3600.0, 30.0, bad),
        )


def _number(options: Mapping[str, str], name: str, kind: type, low: float, high: float, default: float,
            bad: Any) -> Any:  # fmt: skip
    text = options.get(name)
    if text is None:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise bad(f"option {name}={text!r} is not a number") from None
    if not low <= value <= high:
        raise bad(f"option {name}={text!r} must be from {low:g} to {high:g}")
    return value
