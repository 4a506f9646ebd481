"""Reading what the commands wrote: results documents (cluster, threshold), run records (JSON lines) and JUnit XML.

Each file is recognised by its content, not its name: a JSON object with a ``kind``, JSON lines of job records
(``mali-hil run --results``), or a JUnit XML file (``mali-hil run --junitxml``, for the property results).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mali_hil.errors import MaliHilError
from mali_hil.harness.records.results import LoadResult

CLUSTER, THRESHOLD, BOARD_DIFF = "mali-hil.cluster", "mali-hil.threshold", "mali-hil.board-diff"


class ReportInputError(MaliHilError, ValueError):
    """A file given to ``mali-hil report`` that is not a results file, named with what it is instead."""


@dataclass
class PropertyCase:
    test: str
    loader: str
    prop: str
    outcome: str  # passed / failed / error / skipped
    device: str | None = None


@dataclass
class ReportInputs:
    clusters: list[dict[str, Any]] = field(default_factory=list)
    thresholds: list[dict[str, Any]] = field(default_factory=list)
    board_diffs: list[dict[str, Any]] = field(default_factory=list)  # board diff's summary.json
    records: list[tuple[str, LoadResult]] = field(default_factory=list)  # (test id, record) from run
    properties: list[PropertyCase] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def count(self) -> int:
        return (len(self.clusters) + len(self.thresholds) + len(self.board_diffs) + len(self.records)
                + len(self.properties))


def read_inputs(paths: list[str]) -> ReportInputs:
    inputs = ReportInputs()
    for name in paths:
        path = Path(name)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ReportInputError(f"no results file at {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ReportInputError(f"cannot read {path} as text ({exc})") from None
        before = inputs.count()
        _read_one(path, text, inputs)
        if inputs.count() == before:  # an empty file made a report of nothing, exit 0: a claim without evidence
            raise ReportInputError(f"{path} holds no results (no job record, document or mali-hil property case)")
        inputs.sources.append(str(path))
    return inputs


def _read_one(path: Path, text: str, inputs: ReportInputs) -> None:
    stripped = text.lstrip()
    if stripped.startswith("<"):
        inputs.properties.extend(_junit(path, text))
        return
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and doc.get("kind") in (CLUSTER, THRESHOLD, BOARD_DIFF):
        kinds = {CLUSTER: inputs.clusters, THRESHOLD: inputs.thresholds, BOARD_DIFF: inputs.board_diffs}
        kinds[doc["kind"]].append(doc)
        return
    if isinstance(doc, dict) and "kind" in doc:
        raise ReportInputError(f"{path}: results of kind {doc['kind']!r} are not known to this mali-hil")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            test = data.pop("test", "")
            inputs.records.append((test, LoadResult.from_dict(data)))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ReportInputError(
                f"{path} line {number}: not a cluster or threshold document, nor a job record"
                f" of mali-hil run --results ({type(exc).__name__}: {exc})"
            ) from None


def _junit(path: Path, text: str) -> list[PropertyCase]:
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ReportInputError(f"{path}: not well-formed XML ({exc})") from None
    cases = []
    for case in root.iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        prop, loader = props.get("mali_hil.property"), props.get("mali_hil.loader")
        if not prop or not loader:
            continue
        outcome = "passed"
        for child, name in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            if case.find(child) is not None:
                outcome = name
                break
        test = f"{case.get('classname', '')}::{case.get('name', '')}"
        cases.append(PropertyCase(test, loader, prop, outcome, props.get("mali_hil.device")))
    return cases
