"""The farm run in KCIDB's JSON (KernelCI's reporting schema, v5.3), for a KernelCI instance or any dashboard that
reads it: ``kcidb.json`` beside ``summary.json``.

- one checkout: the mali-hil source under test (its git commit, from ``GITHUB_SHA`` or the suite's git checkout);
- one build: the mali-hil installed for the run (its version);
- a test object per run of a test on a board, reruns included, with its status in KCIDB's own terms (FAIL,
  ERROR, MISS, PASS, SKIP); the board is the test's ``environment`` (place, family, tags); a flake is its failing
  run and its passing one, both marked in ``misc``;
- an issue per fails or flakes entry that judged a test, and an incident linking it to the test: ``present`` for a
  known failure or flake seen, not present for a known failure that passed (an unexpected pass).

Written without the ``kcidb-io`` package (a plain JSON dump, nothing more to install on the controller); the
tests validate it with ``kcidb_io.schema.LATEST``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

FILE = "kcidb.json"
ORIGIN = "mali_hil"
VERSION = {"major": 5, "minor": 3}
JUDGED = ("EXPECTED_FAIL", "UNEXPECTED_PASS", "FLAKE")  # verdicts a fails or flakes entry gave (a skip is no issue)


def write(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(document(report), indent=1) + "\n", encoding="utf-8")


def document(report: dict[str, Any]) -> dict[str, Any]:
    import mali_hil

    run = re.sub(r"[^0-9A-Za-z]", "", report["started"])
    checkout, build = f"{ORIGIN}:{run}", f"{ORIGIN}:{run}-build"
    tests: list[dict[str, Any]] = []
    issues: dict[str, dict[str, Any]] = {}
    incidents: list[dict[str, Any]] = []
    for place, board in sorted(report["boards"].items()):
        environment = {"comment": f"labgrid place {place}",
                       "misc": {"place": place, "family": board.get("family", place), "tags": board.get("tags", {})}}
        for key, test in sorted(board["tests"].items()):
            runs = _runs(f"{ORIGIN}:{run}:{place}:{key}", build, key, test, report["started"], environment)
            tests += runs
            if test.get("expected") and test.get("verdict") in JUDGED:
                issue = _issue(test["expected"])
                issues.setdefault(issue["id"], issue)
                incidents.append({"id": f"{runs[-1]['id']}:incident", "origin": ORIGIN, "issue_id": issue["id"],
                                  "issue_version": issue["version"], "test_id": runs[-1]["id"], "build_id": build,
                                  "present": test.get("verdict") != "UNEXPECTED_PASS"})  # fmt: skip
    return {"version": VERSION, "checkouts": [_checkout(checkout, report)],
            "builds": [{"id": build, "checkout_id": checkout, "origin": ORIGIN, "start_time": report["started"],
                        "comment": f"mali-hil {mali_hil.__version__} as installed", "status": "PASS",
                        "misc": {"mali_hil": mali_hil.__version__}}],
            "tests": tests, "issues": list(issues.values()), "incidents": incidents}  # fmt: skip


def _checkout(checkout: str, report: dict[str, Any]) -> dict[str, Any]:
    source: dict[str, Any] = {"id": checkout, "origin": ORIGIN, "tree_name": "mali-hil", "valid": True,
                              "start_time": report["started"],
                              "comment": f"mali-hil farm run against {report['coordinator']}"}  # fmt: skip
    commit = _commit()
    if commit:
        source["git_commit_hash"] = commit
    if os.environ.get("GITHUB_REPOSITORY"):
        server = os.environ.get("GITHUB_SERVER_URL", "https://github.com")
        source["git_repository_url"] = f"{server}/{os.environ['GITHUB_REPOSITORY']}"
    return source


def _runs(prefix: str, build: str, key: str, test: dict[str, Any], started: str,
          environment: dict[str, Any]) -> list[dict[str, Any]]:  # fmt: skip
    """A KCIDB test object per run of the test (a flake: its failing run(s) and its passing one)."""
    objects = []
    for number, run_of in enumerate(test.get("history") or [{"run": "attempt-1", "status": test["status"]}]):
        entry: dict[str, Any] = {
            "id": f"{prefix}:{number}", "build_id": build, "origin": ORIGIN, "path": path_of(key),
            "status": run_of["status"], "comment": test.get("nodeid", key), "environment": environment,
            "start_time": started, "misc": {"test": key, "run": run_of["run"], "verdict": test.get("verdict")},
        }  # fmt: skip
        if run_of.get("duration_s") is not None:
            entry["duration"] = run_of["duration_s"]
        objects.append(entry)
    return objects


def _issue(listed: dict[str, str]) -> dict[str, Any]:
    """An expectations entry as a KCIDB issue: its id stays the same across nights while the entry does."""
    return {"id": f"{ORIGIN}:expectations:{listed['where'].split(':')[0]}:{listed['pattern']}", "version": 1,
            "origin": ORIGIN, "culprit": {"code": True, "tool": False, "harness": False},
            "comment": f"{listed['where']}: {listed['reason']}"}  # fmt: skip


def path_of(key: str) -> str:
    """``test_numerics.py::test_f32_edge_cases[{device}-chunked]`` -> ``mali_hil.test_numerics.test_f32_edge_cases.
    chunked``: KCIDB's dot-separated path of ``[A-Za-z0-9_-]`` names."""
    head, _, params = key.partition("[")
    parts = [part.removesuffix(".py") for part in re.split(r"::|/", head) if part]
    params = params.removesuffix("]").replace("{device}", "").strip("-")
    if params:
        parts.append(params)
    return ".".join([ORIGIN, *(re.sub(r"[^A-Za-z0-9_-]", "_", part) for part in parts)])


def _commit() -> str | None:
    if os.environ.get("GITHUB_SHA"):
        return os.environ["GITHUB_SHA"]
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=10, stdin=subprocess.DEVNULL)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None
