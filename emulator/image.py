"""The emulated Mali as a Docker image: ``mali-hil emulator build-image [--base IMAGE] [--tag T]``.

Built through the Docker SDK for Python (the ``docker`` distribution, imported only here and in the docker
transport). Where no registry can be reached (this project's CI, air-gapped farms) the base is made locally with
``debootstrap --variant=minbase`` and ``docker import``; where one can, ``--base debian:12-slim`` (or any Debian or
Ubuntu image with apt) works the same. Python packages come from a wheelhouse made on this machine for the
image's own Python and glibc, never from an index inside the build; apt inside the build uses the host's network.

The image is named by a hash of everything it is made from (the Dockerfile, the base image's id, the
requirements, the wheel of the running mali-hil), so a second build of the same content is a lookup, and a
device finds the image of the running mali-hil by its ``mali-hil.build`` label.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import distribution
from pathlib import Path
from typing import Any

from mali_hil.errors import MaliHilError

REPOSITORY = "mali-hil/emulator"
BASE_REPOSITORY = "mali-hil/debian-base"
DEFAULT_SUITE = "bookworm"  # Debian 12, as CI; its PoCL 3.1 has no fp16 (the probe says so per image)
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DOCKERFILE = Path(__file__).parent / "docker" / "Dockerfile"
BUILD_LABEL = "mali-hil.build"  # the running mali-hil's wheel version (with its content hash)
KEY_LABEL = "mali-hil.key"  # the hash of everything the image was made from
BASE_ENV = "MALI_HIL_DOCKER_BASE"  # the default for --base (CI where a registry is reachable sets debian:12-slim)


class DockerError(MaliHilError, RuntimeError):
    """The Docker engine cannot be reached or refused what mali-hil asked of it; the message says what to fix."""


def docker_client() -> Any:
    """A client for the local engine (``DOCKER_HOST`` and friends apply); a clear error when there is none."""
    try:
        import docker
    except ImportError:
        raise DockerError("the Docker SDK for Python is not installed: pip install 'mali-hil[docker]'") from None
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as exc:  # the SDK raises requests' and its own errors alike: say what it said
        raise DockerError(f"cannot reach the Docker engine ({exc}); on Debian: apt-get install docker.io, then "
                          "start dockerd (systemctl start docker, or `dockerd &` as root)") from None  # fmt: skip
    return client


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    image_id: str
    size_bytes: int
    seconds: float
    cached: bool  # the image of this content existed: nothing was built
    fp16: str  # "native" or "emulated": from the image's own OpenCL probe
    backend: str  # the OpenCL platform the image's PoCL reports


def running_build() -> str:
    """The running mali-hil's wheel version (``0.1.0+h<hash of its code>``), the label an image must carry."""
    from mali_hil.wheel import build_running_wheel

    with tempfile.TemporaryDirectory(prefix="mali-hil-wheel-") as tmp:
        return build_running_wheel(Path(tmp)).name.split("-")[1]


def find_image(client: Any, build: str | None = None) -> str | None:
    """The newest local image built from the running mali-hil (or ``build``), or None."""
    images = client.images.list(filters={"label": f"{BUILD_LABEL}={build or running_build()}"})
    images.sort(key=lambda image: image.attrs.get("Created", ""), reverse=True)
    for image in images:
        if image.tags:
            return str(image.tags[0])
    return None


def ensure_base(client: Any, suite: str = DEFAULT_SUITE, mirror: str = DEBIAN_MIRROR) -> str:
    """``mali-hil/debian-base:SUITE`` made with debootstrap (minbase) and ``docker import`` unless it exists."""
    tag = f"{BASE_REPOSITORY}:{suite}"
    if _image_id(client, tag) is not None:
        return tag
    if shutil.which("debootstrap") is None:
        raise DockerError("no base image and no debootstrap to make one: apt-get install debootstrap, or give "
                          "--base IMAGE where a registry can be reached")  # fmt: skip
    if os.geteuid() != 0:
        raise DockerError("making the base image with debootstrap needs root; or give --base IMAGE")
    with tempfile.TemporaryDirectory(prefix="mali-hil-base-", dir="/var/tmp") as tmp:
        root, tarball = Path(tmp) / "root", Path(tmp) / "root.tar"
        _run(["debootstrap", "--variant=minbase", suite, str(root), mirror], "debootstrap", timeout=1800)
        # apt lists and caches would only make every layer above bigger; the image's own build updates them
        for junk in ("var/lib/apt/lists", "var/cache/apt/archives"):
            for path in (root / junk).glob("*"):
                if path.is_file():
                    path.unlink()
        _run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(tarball), "."], "tar", timeout=600)
        client.api.import_image_from_file(str(tarball), repository=BASE_REPOSITORY, tag=suite)
    return tag


def build_image(base: str | None = None, tag: str | None = None, log: Any = None) -> BuiltImage:
    """Build (or find, by content) the emulator image; ``log(line)`` gets the build's progress."""
    client = docker_client()
    say = log or (lambda line: None)
    started = time.monotonic()
    base = base or os.environ.get(BASE_ENV) or None
    if base is None:
        say(f"base: {BASE_REPOSITORY}:{DEFAULT_SUITE} (debootstrap, made once)")
        base = ensure_base(client)
    base_id = _image_id(client, base) or _pull(client, base)
    from mali_hil.wheel import build_running_wheel

    with tempfile.TemporaryDirectory(prefix="mali-hil-image-") as tmp:
        context = Path(tmp)
        shutil.copy(DOCKERFILE, context / "Dockerfile")
        wheel = build_running_wheel(context / "mali-hil")
        requirements = _requirements()
        key = hashlib.sha256("\0".join([DOCKERFILE.read_text(), base_id, *requirements, wheel.name]).encode())
        key_text = key.hexdigest()[:16]
        target = tag or f"{REPOSITORY}:{key_text}"
        existing = client.images.list(filters={"label": f"{KEY_LABEL}={key_text}"})
        cached = bool(existing)
        if cached:
            client.images.get(existing[0].id).tag(*_split_tag(target))
        else:
            system = _build(client, context, base, None, "system", {}, say)  # apt only: tells the image's Python
            python, machine, glibc = _probe_system(client, system)
            say(f"image Python {python}, {machine}, glibc {glibc}: wheelhouse for it")
            _wheelhouse(context / "wheelhouse", requirements, python, machine, glibc)
            labels = {KEY_LABEL: key_text, BUILD_LABEL: wheel.name.split("-")[1], "mali-hil.base": base}
            _build(client, context, base, target, None, labels, say)
    image = client.images.get(target)
    probe = _probe_opencl(client, target)
    return BuiltImage(tag=target, image_id=image.id, size_bytes=int(image.attrs.get("Size", 0)),
                      seconds=time.monotonic() - started, cached=cached,
                      fp16="native" if probe.get("fp16") else "emulated",
                      backend=str(probe.get("platform", probe.get("error", "unknown"))))  # fmt: skip


def _build(client: Any, context: Path, base: str, tag: str | None, target: str | None, labels: dict[str, str],
           say: Any) -> str:  # fmt: skip
    """One ``docker build`` (host network, for apt); returns the image id; a failed step is a DockerError."""
    image_id, lines = None, []
    stream = client.api.build(path=str(context), tag=tag, target=target, buildargs={"BASE": base}, labels=labels,
                              network_mode="host", rm=True, forcerm=True, decode=True)  # fmt: skip
    for chunk in stream:
        if "error" in chunk:
            detail = "".join(lines[-15:])
            raise DockerError(f"docker build failed: {chunk['error'].strip()}\n{detail}")
        text = chunk.get("stream", "")
        if text:
            lines.append(text)
            if text.startswith("Step "):
                say(text.strip())
        image_id = (chunk.get("aux") or {}).get("ID", image_id)
    if image_id is None:
        raise DockerError("docker build gave no image: " + "".join(lines[-15:]))
    return str(image_id)


def _probe_system(client: Any, image: str) -> tuple[str, str, str]:
    code = ("import platform, sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}', platform.machine(), "
            "platform.libc_ver()[1])")  # fmt: skip
    out = _run_in(client, image, ["python3", "-c", code])
    python, machine, glibc = out.split()
    return python, machine, glibc


def _probe_opencl(client: Any, image: str) -> dict[str, Any]:
    """The image's PoCL as it is, without our layer: its platform version and whether its device has fp16."""
    code = ("import json, pyopencl as cl; p = cl.get_platforms()[0]; d = p.get_devices()[0]; "
            "print(json.dumps({'platform': p.version.split('  ')[0], "
            "'fp16': 'cl_khr_fp16' in d.extensions.split()}))")  # fmt: skip
    try:
        return dict(json.loads(_run_in(client, image, ["/opt/mali-hil/bin/python", "-c", code]).splitlines()[-1]))
    except (ValueError, IndexError, DockerError) as exc:
        return {"error": str(exc)}


def _run_in(client: Any, image: str, argv: list[str]) -> str:
    container = client.containers.create(image, argv, entrypoint=[], network_mode="none",
                                         labels={"mali-hil.probe": "1"})  # fmt: skip
    try:
        container.start()
        status = container.wait(timeout=300)
        out = container.logs(stdout=True, stderr=False).decode(errors="replace")
        if status.get("StatusCode") != 0:
            err = container.logs(stdout=False, stderr=True).decode(errors="replace")
            raise DockerError(f"`{' '.join(argv)}` in {image} failed: {err.strip()[-800:]}")
        return out
    finally:
        container.remove(force=True)


def _requirements() -> list[str]:
    """mali-hil's own dependencies (extras left out), pinned to the versions the harness runs with here where
    they are installed: the worker in the image then runs the same numpy, tinygrad and pyopencl as the harness."""
    from importlib.metadata import PackageNotFoundError, version

    pinned = []
    for requirement in distribution("mali-hil").requires or []:
        if "extra ==" in requirement:
            continue
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]
        try:
            pinned.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pinned.append(requirement)
    return sorted(pinned)


def _wheelhouse(folder: Path, requirements: list[str], python: str, machine: str, glibc: str) -> None:
    """Binary wheels for the image's Python, machine and glibc, downloaded here (pip's cache makes a second
    time cheap); pip inside the image installs from this folder only."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "requirements.txt").write_text("\n".join(requirements) + "\n", encoding="utf-8")
    major, minor = (int(part) for part in (glibc or "2.17").split(".")[:2])
    # pip takes a platform tag literally: every manylinux level the image's glibc can run, oldest first
    platforms = [f"manylinux_{major}_{level}_{machine}" for level in range(17, minor + 1)]
    platforms += [f"manylinux2014_{machine}"] if major == 2 and minor >= 17 else []
    tag = python.replace(".", "")
    argv = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--only-binary=:all:",
            "--python-version", python, "--implementation", "cp", "--abi", f"cp{tag}",
            *[word for platform_tag in platforms for word in ("--platform", platform_tag)],
            "--dest", str(folder), "-r", str(folder / "requirements.txt")]  # fmt: skip
    _run(argv, "pip download (the image's wheelhouse)", timeout=1800)


def _pull(client: Any, base: str) -> str:
    try:
        return str(client.images.pull(base).id)
    except Exception as exc:  # no registry here: say so, with the local alternative
        raise DockerError(f"base image {base!r} is not here and cannot be pulled ({exc}); without a registry, "
                          "leave --base out: the base is then made locally with debootstrap") from None  # fmt: skip


def _image_id(client: Any, ref: str) -> str | None:
    try:
        return str(client.images.get(ref).id)
    except Exception:  # docker.errors.ImageNotFound; the SDK is imported lazily, so not named here
        return None


def _split_tag(ref: str) -> tuple[str, str]:
    repository, _, tag = ref.rpartition(":")
    if not repository or "/" in tag:
        return ref, "latest"
    return repository, tag


def _run(argv: list[str], what: str, timeout: float) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise DockerError(f"{what} took over {timeout:g} s") from None
    if done.returncode != 0:
        raise DockerError(f"{what} failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-1500:]}")
