"""The farm run's combined report: statuses per board and per test in KernelCI's terms, each test's verdict
against its family's expectations (harness/farm/expectations.py), the JSON and Markdown summaries, and the diff
against the previous run's JSON."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

STATUSES = ("PASS", "FAIL", "ERROR", "MISS", "SKIP")
VERDICTS = (*STATUSES, "FLAKE", "EXPECTED_FAIL", "UNEXPECTED_PASS")
BROKEN = ("FAIL", "ERROR", "UNEXPECTED_PASS")
SCHEMA = 1


def verdict_of(test: dict[str, Any]) -> str:
    return str(test.get("verdict") or test["status"])  # a summary from before verdicts has statuses only


def board_status(tests: dict[str, dict[str, Any]], *, infra: str | None = None) -> str:
    """A board FAILs if a test failed unexpectedly or a known failure passed, else ERRORs, else is a MISS if a test
    did not run for the infrastructure (or nothing ran: ``infra`` says why), else PASSes (flakes and expected
    failures included); only skips make it SKIP."""
    seen = Counter(verdict_of(test) for test in tests.values())
    if seen["FAIL"] or seen["UNEXPECTED_PASS"]:
        return "FAIL"
    for status in ("ERROR", "MISS"):
        if seen[status]:
            return status
    if infra is not None:
        return "MISS"
    return "PASS" if seen["PASS"] or seen["FLAKE"] or seen["EXPECTED_FAIL"] else "SKIP"


def totals(boards: dict[str, dict[str, Any]]) -> dict[str, int]:
    seen = Counter(verdict_of(test) for board in boards.values() for test in board["tests"].values())
    return {verdict: seen[verdict] for verdict in VERDICTS}


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
    return {f"{board} :: {test}": verdict_of(data) for board, entry in report.get("boards", {}).items()
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
    lines += ["", f"| board | status | {' | '.join(VERDICTS)} | attempts | reruns | family | note |",
              "| --- | --- |" + " ---: |" * len(VERDICTS) + " ---: | ---: | --- | --- |"]  # fmt: skip
    for name, board in sorted(report["boards"].items()):
        seen = Counter(verdict_of(test) for test in board["tests"].values())
        note = (board.get("infra") or "")[:160].replace("|", "\\|").replace("\n", " ")
        if board.get("lock_lost"):
            note = ("lock lost during the run (coordinator restart?) " + note).strip()
        lines.append(f"| {name} | **{board['status']}** | " + " | ".join(str(seen[s]) for s in VERDICTS)
                     + f" | {len(board['attempts'])} | {len(board.get('reruns', []))} | {board.get('family', '')}"
                     + f" | {note} |")  # fmt: skip
    lines += _listed(report, (*BROKEN, "MISS"), "Not passing", _why_not)
    lines += _listed(report, ("FLAKE",), "Flakes (passed when run again; never a PASS)", _history)
    lines += _listed(report, ("EXPECTED_FAIL",), "Known failures (listed: they pass the run)", _entry)
    proposed = report.get("proposed_flakes") or []
    if proposed:
        lines += ["", "### Proposed for the flakes lists (flaked on consecutive nights)", ""]
        lines += [f"- `{p['family']}-flakes.txt`: `{p['test']}` ({p['nights']} nights, on {p['board']})"
                  for p in proposed]  # fmt: skip
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


def _listed(report: dict[str, Any], verdicts: tuple[str, ...], title: str, detail: Any) -> list[str]:
    found = [(name, test, data) for name, board in sorted(report["boards"].items())
             for test, data in sorted(board["tests"].items()) if verdict_of(data) in verdicts]  # fmt: skip
    if not found:
        return []
    return ["", f"### {title}", ""] + [f"- {verdict_of(data)} `{name}` `{test}`: {detail(data)}"
                                       for name, test, data in found[:200]]  # fmt: skip


def _why_not(data: dict[str, Any]) -> str:
    if verdict_of(data) == "UNEXPECTED_PASS":
        return f"passed, but {data['expected']['where']} lists it as failing: remove the entry"
    why = data.get("message", "").strip().splitlines()[-1:] or [""]
    return why[0][:200] + (f" (runs: {_history(data)})" if len(data.get("history", [])) > 1 else "")


def _history(data: dict[str, Any]) -> str:
    runs = ", ".join(f"{run['run']} {run['status']}" for run in data.get("history", []))
    return runs + (f"; listed: {data['expected']['where']}" if data.get("expected") else "")


def _entry(data: dict[str, Any]) -> str:
    return f"{data['expected']['where']}: {data['expected']['reason']}"
