"""Part of the property suite run on a device, as a map of verdicts: the SSH and Docker tests compare a remote board's
verdicts with this machine's emulated Mali of the same profile and size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def suite_verdicts(device: str, junit: Path, cwd: Path) -> dict[str, str]:
    """Run part of the property suite on ``device``; test name (device left out) -> outcome."""
    from mali_hil.harness.plugin.suite import suite_path

    argv = [sys.executable, "-m", "pytest", str(suite_path()), f"--device={device}", "--loader=chunked",
            "--loader=naive", "--mali-hil-profile=ci", "-k", "numerics or shards or idempotence or corrupt",
            f"--junitxml={junit}", "-q", "-p", "no:cacheprovider"]  # fmt: skip
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=1200)
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-2000:]
    import xml.etree.ElementTree as ET

    verdicts = {}
    for case in ET.parse(junit).iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        verdicts[case.get("name", "").replace(device, "DEVICE")] = outcome
    return verdicts
