"""``mali-hil board diff BOARD TWIN [-- PYTEST ARGS]``: the same tests on a board and on its emulated twin, and how
often the twin's verdicts agree with the board's.

Each side is one ``mali-hil run`` (the property suite, or what the pytest arguments select) with its JUnit XML
and job records kept under ``-o DIR/board`` and ``-o DIR/twin``. Per test and loader the table puts the two
verdicts (the test's outcome, and the statuses of its jobs) side by side with the two RAM peaks (the highest
unified peak of the test's jobs) and their ratio, twin over board. The fidelity figure is the share of rows
whose verdicts agree, and the spread (min, median, max) of the peak ratios. ``summary.json`` (kind
``mali-hil.board-diff``, which ``mali-hil report`` reads) and ``summary.md`` hold the same.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from mali_hil.errors import MaliHilError
from mali_hil.sizes import format_size

BOARD_DIFF = "mali-hil.board-diff"
SIDES = ("board", "twin")
_SEVERITY = ("infra-error", "timeout", "error", "oom-killed", "device-oom", "ok")  # the worst status names a test


def run_side(device: str, folder: Path, pytest_args: list[str], workers: int | None = None) -> float:
    """One ``mali-hil run`` on ``device`` into ``folder``; its wall time in seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("junit.xml", "results.jsonl"):
        (folder / name).unlink(missing_ok=True)  # a run appends records: start each side clean
    argv = [sys.executable, "-m", "mali_hil.harness.cli", "run", "--device", device, "--progress", "off",
            "--junitxml", str(folder / "junit.xml"), "--results", str(folder / "results.jsonl"),
            *(["--workers", str(workers)] if workers else []), "--", *pytest_args]  # fmt: skip
    started = time.monotonic()
    with open(folder / "pytest.log", "wb") as log:
        done = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if done.returncode not in (0, 1) or not (folder / "junit.xml").exists():
        raise MaliHilError(f"the run on {device} did not complete (exit {done.returncode}): "
                           f"see {folder / 'pytest.log'}")  # fmt: skip
    return time.monotonic() - started


def side_rows(device: str, folder: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(test, loader) -> outcome, job statuses and RAM peak, from one side's JUnit XML and records."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for case in ET.parse(folder / "junit.xml").iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        outcome = next((word for tag, word in (("failure", "failed"), ("error", "error"), ("skipped", "skipped"))
                        if case.find(tag) is not None), "passed")  # fmt: skip
        test = f"{case.get('classname', '')}::{case.get('name', '')}".replace(device, "DEVICE")
        rows[(test, props.get("mali_hil.loader") or "-")] = {"outcome": outcome, "statuses": set(), "peak": None}
    records = folder / "results.jsonl"
    for line in records.read_text().splitlines() if records.exists() else []:
        record = json.loads(line)
        test = str(record.get("test", "")).replace(device, "DEVICE")
        # a record's test id is pytest's node id; JUnit's is classname::name: match on the name after the last ::
        key = next((k for k in rows if k[1] == record.get("loader") and _same_test(k[0], test)), None)
        if key is None:
            continue
        row = rows[key]
        row["statuses"].add(record["status"])
        peak = record.get("peak_unified_bytes")
        if peak is not None:
            row["peak"] = max(row["peak"] or 0, peak)
    return rows


def _same_test(junit_id: str, node_id: str) -> bool:
    return junit_id.rsplit("::", 1)[-1] == node_id.rsplit("::", 1)[-1]


def verdict(row: dict[str, Any] | None) -> str:
    """The test's outcome and its jobs' worst status, e.g. ``passed/ok`` or ``failed/oom-killed``."""
    if row is None:
        return "missing"
    worst = next((s for s in _SEVERITY if s in row["statuses"]), None)
    return row["outcome"] + (f"/{worst}" if worst else "")


def compare(board: str, twin: str, folder: Path, seconds: dict[str, float]) -> dict[str, Any]:
    """The summary document of one diff (what summary.json holds)."""
    sides = {name: side_rows(device, folder / name) for name, device in zip(SIDES, (board, twin), strict=True)}
    rows, ratios = [], []
    for test, loader in sorted(set(sides["board"]) | set(sides["twin"])):
        b, t = sides["board"].get((test, loader)), sides["twin"].get((test, loader))
        peaks = [row["peak"] if row else None for row in (b, t)]
        ratio = peaks[1] / peaks[0] if peaks[0] and peaks[1] else None
        if ratio is not None:
            ratios.append(ratio)
        rows.append({"test": test, "loader": loader, "board": verdict(b), "twin": verdict(t),
                     "agree": verdict(b) == verdict(t), "board_peak": peaks[0], "twin_peak": peaks[1],
                     "ratio": ratio})  # fmt: skip
    agree = sum(row["agree"] for row in rows)
    spread = {"min": min(ratios), "median": statistics.median(ratios), "max": max(ratios)} if ratios else None
    return {"kind": BOARD_DIFF, "board": board, "twin": twin, "rows": rows,
            "fidelity": {"agree": agree, "total": len(rows), "peak_ratio": spread}, "seconds": seconds}  # fmt: skip


def headline(doc: dict[str, Any]) -> str:
    fid = doc["fidelity"]
    share = f"{fid['agree'] / fid['total']:.0%}" if fid["total"] else "n/a"
    text = f"fidelity: {fid['agree']} of {fid['total']} verdicts agree ({share})"
    spread = fid["peak_ratio"]
    if spread:
        text += f"; twin/board RAM peak ratio {spread['min']:.2f} / {spread['median']:.2f} / {spread['max']:.2f} " \
                "(min / median / max)"  # fmt: skip
    return text


def table_rows(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["test", "loader", "board", "twin", "agree", "board peak", "twin peak", "twin/board"]
    rows = [[row["test"], row["loader"], row["board"], row["twin"], "yes" if row["agree"] else "NO",
             _size(row["board_peak"]), _size(row["twin_peak"]), f"{row['ratio']:.2f}" if row["ratio"] else "n/a"]
            for row in doc["rows"]]  # fmt: skip
    return headers, rows


def markdown(doc: dict[str, Any]) -> str:
    headers, rows = table_rows(doc)
    lines = [f"# {doc['board']} against its twin {doc['twin']}", "", headline(doc), "",
             "| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]  # fmt: skip
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def terminal(doc: dict[str, Any]) -> str:
    headers, rows = table_rows(doc)
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in [headers, *rows]]  # fmt: skip
    return "\n".join([*lines, headline(doc)])


def board_diff(board: str, twin: str, folder: Path, pytest_args: list[str], *,
               workers: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Both runs, then the summary written to ``folder``."""
    from mali_hil.harness.devices.registry import check_device

    for device in (board, twin):
        check_device(device)  # a typo fails now, not after the board's run
    seconds = {side: run_side(device, folder / side, pytest_args, workers)
               for side, device in zip(SIDES, (board, twin), strict=True)}  # fmt: skip
    doc = compare(board, twin, folder, seconds)
    (folder / "summary.json").write_text(json.dumps(doc, indent=1) + "\n")
    (folder / "summary.md").write_text(markdown(doc))
    return doc


def _size(n: int | None) -> str:
    return "n/a" if n is None else format_size(n)
