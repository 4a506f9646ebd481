"""What a board family is expected to do, kept in the repository as Mesa keeps its per-GPU lists, and each test's
verdict against it.

A board's family is its place's ``expectations`` tag, else its ``gpu`` tag, else the place's name. Its lists, in
``harness/farm/expectations/`` (or ``farm run --expectations DIR``), with ``_all-*`` for every family:

- ``FAMILY-fails.txt``: ``TEST,FAIL`` or ``TEST,ERROR``  ``# reason, since DATE``: known failures. One that fails
  so is ``EXPECTED_FAIL`` and passes the run; one that passes is ``UNEXPECTED_PASS`` and fails it, so the list stays
  true (``mali-hil farm expectations`` proposes the edit).
- ``FAMILY-flakes.txt``: ``TEST  # reason, since DATE``: known flakes; a failure of one is a ``FLAKE``.
- ``FAMILY-skips.txt``: ``TEST  # reason, since DATE``: never run on the family (reported SKIP with the reason).

TEST is the farm's device-free test key (``test_numerics.py::test_f32_edge_cases[{device}-chunked]``) or
``re:REGEX`` over it. Verdicts are deqp-runner's, in capitals: PASS, FAIL, ERROR, MISS, SKIP, FLAKE,
EXPECTED_FAIL, UNEXPECTED_PASS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mali_hil.expectations import Expectation, first_match, parse

EXPECTATIONS_DIR = Path(__file__).parent / "expectations"
COMMON = "_all"
KINDS = ("fails", "flakes", "skips")
FAILED = ("FAIL", "ERROR")


@dataclass
class Expected:
    family: str
    files: list[str] = field(default_factory=list)
    fails: list[Expectation] = field(default_factory=list)
    flakes: list[Expectation] = field(default_factory=list)
    skips: list[Expectation] = field(default_factory=list)

    def covers_failure(self, test: str, status: str) -> Expectation | None:
        """The entry that makes this failure expected (a known failure of that status, or a known flake)."""
        fail = first_match(self.fails, test)
        if fail is not None and fail.outcome == status:
            return fail
        return first_match(self.flakes, test)


def family_of(place: str, tags: dict[str, str]) -> str:
    return tags.get("expectations") or tags.get("gpu") or place


def load(folder: Path | None, family: str) -> Expected:
    """The family's lists and the common ones under ``folder`` (default: the packaged ones); a missing file is an
    empty list."""
    folder = folder or EXPECTATIONS_DIR
    expected = Expected(family)
    for name in (COMMON, family):
        for kind in KINDS:
            path = folder / f"{name}-{kind}.txt"
            if not path.is_file():
                continue
            expected.files.append(str(path))
            entries = parse(path.read_text(encoding="utf-8"), path.name, outcomes=FAILED if kind == "fails" else None)
            getattr(expected, kind).extend(entries)
    return expected


def judge(tests: dict[str, dict[str, Any]], expected: Expected) -> None:
    """Each test's ``verdict`` (and the ``expected`` entry behind it) from its final status and the lists."""
    for key, test in tests.items():
        status, entry = test["status"], None
        verdict = status
        if status in FAILED:
            entry = expected.covers_failure(key, status)
            if entry is not None:
                verdict = "EXPECTED_FAIL" if entry in expected.fails else "FLAKE"
        elif status == "PASS":
            entry = first_match(expected.fails, key)
            verdict = "UNEXPECTED_PASS" if entry is not None else "PASS"
        elif status == "FLAKE":
            entry = first_match(expected.flakes, key)
        elif status == "SKIP":
            entry = first_match(expected.skips, key)
        test["verdict"] = verdict
        test["expected"] = None if entry is None else {"where": entry.where, "pattern": entry.pattern,
                                                       "reason": entry.reason}


def to_rerun(tests: dict[str, dict[str, Any]], expected: Expected) -> list[str]:
    """Keys of the tests that failed without an entry saying they may: rerun before they count."""
    return [key for key, test in tests.items()
            if test["status"] in FAILED and expected.covers_failure(key, test["status"]) is None]  # fmt: skip


def propose_flakes(boards: dict[str, dict[str, Any]], previous: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Flakes found by rerunning (not listed) that flaked on the previous night too: each test's ``flake_nights``
    counts the nights in a row; from two on it is proposed for its family's flakes list."""
    proposed = []
    before = (previous or {}).get("boards", {})
    for name, board in sorted(boards.items()):
        for key, test in sorted(board["tests"].items()):
            if test.get("verdict") != "FLAKE" or test.get("expected"):
                continue
            last = before.get(name, {}).get("tests", {}).get(key, {})
            test["flake_nights"] = 1 + (last.get("flake_nights", 1) if last.get("verdict") == "FLAKE" else 0)
            if test["flake_nights"] >= 2:
                proposed.append({"board": name, "family": board.get("family", name), "test": key,
                                 "nights": test["flake_nights"]})  # fmt: skip
    return proposed


def update(report: dict[str, Any], folder: Path | None = None) -> list[str]:
    """Edit the lists under ``folder`` (default: the packaged ones) to what ``report`` (a summary.json) saw, for
    review in a diff: unexpected failures appended to their family's fails list, flakes proposed on consecutive
    nights to its flakes list, and exact entries of known failures that passed removed (a ``re:`` entry is only
    named: other tests may still match it). Each added line's reason starts ``REVIEW:`` for a person to finish.
    Returns what was done, a line each."""
    folder = folder or EXPECTATIONS_DIR
    day = str(report.get("started", ""))[:10]
    added: dict[Path, list[str]] = {}
    removed: dict[Path, set[str]] = {}
    done: list[str] = []
    for name, board in sorted(report["boards"].items()):
        family = board.get("family", name)
        for key, test in sorted(board["tests"].items()):
            verdict = test.get("verdict")
            if verdict in FAILED:
                line = f"{key},{verdict}  # REVIEW: {verdict} on {name} in the run of {day}; since {day}"
                added.setdefault(folder / f"{family}-fails.txt", []).append(line)
            elif verdict == "UNEXPECTED_PASS":
                where, pattern = test["expected"]["where"], test["expected"]["pattern"]
                if pattern.startswith("re:"):
                    done.append(f"review {where}: {key} passed on {name}; the pattern may still match others")
                else:
                    removed.setdefault(folder / where.rsplit(":", 1)[0], set()).add(pattern)
    for flake in report.get("proposed_flakes") or []:
        line = f"{flake['test']}  # REVIEW: flaked {flake['nights']} nights in a row on {flake['board']}; since {day}"
        added.setdefault(folder / f"{flake['family']}-flakes.txt", []).append(line)
    for path, patterns in sorted(removed.items()):
        kept = []
        for raw in path.read_text(encoding="utf-8").splitlines():
            test = raw.partition("#")[0].strip().rpartition(",")[0]
            if test in patterns:
                done.append(f"removed from {path.name}: {raw.strip()}")
            else:
                kept.append(raw)
        path.write_text("\n".join(kept) + "\n", encoding="utf-8")
    for path, lines in sorted(added.items()):
        text = path.read_text(encoding="utf-8") if path.is_file() else _HEADER.format(name=path.name)
        known = {entry.partition("#")[0].strip() for entry in text.splitlines()}
        fresh = [line for line in dict.fromkeys(lines) if line.partition("#")[0].strip() not in known]
        if fresh:
            path.write_text(text.rstrip("\n") + "\n" + "\n".join(fresh) + "\n", encoding="utf-8")
            done += [f"added to {path.name}: {line}" for line in fresh]
    return done


_HEADER = "# {name}: see harness/farm/expectations.py for the format. Every entry says why, and since when.\n"
