"""The farm run's combined report: statuses per board and per test in KernelCI's terms, the JSON and Markdown
summaries, and the diff against the previous run's JSON."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

STATUSES = ("PASS", "FAIL", "ERROR", "MISS", "SKIP")
BROKEN = ("FAIL", "ERROR")
SCHEMA = 1


def board_status(tests: dict[str, dict[str, Any]], *, infra: str | None = None) -> str:
    """A board FAILs if a test failed, else ERRORs, else is a MISS if a test did not run for the infrastructure
    (or nothing ran: ``infra`` says why), else PASSes; only skips make it SKIP."""
    seen = Counter(test["status"] for test in tests.values())
    for status in ("FAIL", "ERROR", "MISS"):
        if seen[status]:
            return status
    if infra is not None:
        return "MISS"
    return "PASS" if seen["PASS"] else "SKIP"


def totals(boards: dict[str, dict[str, Any]]) -> dict[str, int]:
    seen = Counter(test["status"] for board in boards.values() for test in board["tests"].values())
    return {status: seen[status] for status in STATUSES}


def diff(previous: dict[str, Any] | None, current: dict[str, Any]) -> dict[str, list[str]]:
    """``board :: test`` keys that newly fail, were fixed, still fail, or are newly missing against last run."""
    found: dict[str, list[str]] = {"new_failures": [], "fixed": [], "still_failing": [], "newly_missing": []}
    if previous is None:
        return found
    before = _flat(previous)
    for key, status in sorted(_flat(current).items()):
        was = before.get(key)
        if status in BROKEN:
            found["still_failing" if was in BROKEN else "new_failures"].append(key)
        elif status == "PASS" and was in BROKEN:
            found["fixed"].append(key)
        elif status == "MISS" and was != "MISS":
            found["newly_missing"].append(key)
    return found


def _flat(report: dict[str, Any]) -> dict[str, str]:
    return {f"{board} :: {test}": data["status"] for board, entry in report.get("boards", {}).items()
            for test, data in entry.get("tests", {}).items()}  # fmt: skip


def load_previous(path: Path) -> dict[str, Any] | None:
    from mali_hil.harness.farm.failures import FarmError

    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FarmError(f"the previous run's summary {path} is not readable JSON ({exc}); give another with "
                        "--previous or remove it") from None  # fmt: skip
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise FarmError(f"{path} is not a mali-hil farm summary (schema {SCHEMA})")
    return data


def markdown(report: dict[str, Any]) -> str:
    lines = [f"## mali-hil farm run: {report['status']}", ""]
    lines.append(f"Coordinator `{report['coordinator']}`, match `{report['match'] or 'every place'}`, "
                 f"{len(report['boards'])} board(s), wall {report['wall_s']:.1f} s.")  # fmt: skip
    lines += ["", "| board | status | PASS | FAIL | ERROR | MISS | SKIP | attempts | note |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]  # fmt: skip
    for name, board in sorted(report["boards"].items()):
        seen = Counter(test["status"] for test in board["tests"].values())
        note = (board.get("infra") or "")[:160].replace("|", "\\|").replace("\n", " ")
        if board.get("lock_lost"):
            note = ("lock lost during the run (coordinator restart?) " + note).strip()
        lines.append(f"| {name} | **{board['status']}** | " + " | ".join(str(seen[s]) for s in STATUSES)
                     + f" | {len(board['attempts'])} | {note} |")  # fmt: skip
    broken = [(name, test, data) for name, board in sorted(report["boards"].items())
              for test, data in sorted(board["tests"].items()) if data["status"] in (*BROKEN, "MISS")]  # fmt: skip
    if broken:
        lines += ["", "### Not passing", ""]
        for name, test, data in broken[:200]:
            why = data.get("message", "").strip().splitlines()[-1:] or [""]
            lines.append(f"- {data['status']} `{name}` `{test}`: {why[0][:200]}")
    changes = report.get("diff")
    if changes is not None:
        lines += ["", "### Against the previous run", ""]
        if report.get("previous") is None:
            lines.append("No previous run to compare with.")
        for key, title in (("new_failures", "New failures"), ("fixed", "Fixed"), ("still_failing", "Still failing"),
                           ("newly_missing", "Newly missing")):  # fmt: skip
            entries = changes.get(key, [])
            lines.append(f"- {title}: {len(entries)}")
            lines += [f"  - `{entry}`" for entry in entries[:50]]
    return "\n".join(lines) + "\n"
