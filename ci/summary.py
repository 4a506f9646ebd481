"""Markdown for a CI job's summary ($GITHUB_STEP_SUMMARY) from pytest's JUnit XML and mali-hil's results JSON lines.

    python3 ci/summary.py TITLE JUNIT.xml RESULTS.jsonl >> "$GITHUB_STEP_SUMMARY"

Standard library only (it runs with whatever python3 the runner has, even after a failed setup); a missing file
is said, not an error, so the summary of a job that broke early still shows.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path


def tests_section(junit: Path) -> list[str]:
    if not junit.is_file():
        return [f"No JUnit report ({junit}): the job ended before pytest wrote one."]
    outcomes: Counter[str] = Counter()
    failed = []
    for case in ET.parse(junit).iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        outcomes[outcome] += 1
        if outcome in ("failure", "error"):
            failed.append(f"{case.get('classname', '')}::{case.get('name', '')}")
    counts = " | ".join(str(outcomes[key]) for key in ("passed", "failure", "error", "skipped"))
    lines = ["| passed | failed | errors | skipped |", "| ---: | ---: | ---: | ---: |", f"| {counts} |"]
    if failed:
        lines += ["", "Failed:", *[f"- `{name}`" for name in failed[:50]]]
        if len(failed) > 50:
            lines.append(f"- ... and {len(failed) - 50} more")
    return lines


def jobs_section(results: Path) -> list[str]:
    if not results.is_file():
        return [f"No load-job records ({results})."]
    by_loader: dict[str, Counter[str]] = defaultdict(Counter)
    peaks: dict[str, int] = defaultdict(int)
    for line in results.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        key = f"{record.get('loader')} on {record.get('device')}"
        by_loader[key][record.get("status", "?")] += 1
        peaks[key] = max(peaks[key], int(record.get("peak_unified_bytes") or 0))
    statuses = sorted({status for counts in by_loader.values() for status in counts})
    lines = ["| loader / device | " + " | ".join(statuses) + " | RAM peak (MiB) |",
             "| --- | " + " | ".join("---:" for _ in statuses) + " | ---: |"]  # fmt: skip
    for key in sorted(by_loader):
        counts = " | ".join(str(by_loader[key][status]) for status in statuses)
        lines.append(f"| {key} | {counts} | {peaks[key] / 2**20:.0f} |")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    title, junit, results = argv[0], Path(argv[1]), Path(argv[2])
    print("\n".join([f"## {title}", "", *tests_section(junit), "", "### Load jobs", "", *jobs_section(results), ""]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
