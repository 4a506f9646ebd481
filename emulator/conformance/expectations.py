"""Expected differences from plain PoCL, per profile, as data: ``expectations/PROFILE.txt`` (and ``_all.txt``,
for every profile), reviewed like code, as Mesa keeps its per-GPU fails, flakes and skips lists.

One entry a line: ``TEST,OUTCOME  # reason (source), since YYYY-MM-DD``. TEST is ``suite::nodeid``, or
``re:REGEX`` matched against the whole id; OUTCOME is what the test does on the profile (``fail``, ``skip``,
``crash``, ``oom``, ...), or ``flake`` for a test whose outcome may differ either way. Every entry needs its
reason (one parser for these and the farm's lists: mali_hil/expectations.py). A difference no entry names is
unexpected; an entry whose tests ran and did not differ so is stale: both fail the check, so the files stay true.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mali_hil.emulator.conformance.run import OUTCOMES, SuiteRun
from mali_hil.expectations import Expectation
from mali_hil.expectations import parse as parse_list

EXPECTATIONS_DIR = Path(__file__).parent / "expectations"
COMMON = "_all"
SLOW = "_slow"  # tests a quick run leaves to the nightly: ``TEST  # reason`` a line
FLAKE = "flake"
MISSING = "missing"  # a test one run reached and the other did not (its id differs, or it was never collected)


def load_expectations(profile_key: str) -> list[Expectation]:
    """The entries for ``profile_key`` (its own file and the common one; a missing file is an empty list)."""
    entries: list[Expectation] = []
    for name in (COMMON, profile_key):
        path = EXPECTATIONS_DIR / f"{name}.txt"
        if path.is_file():
            entries += parse(path.read_text(encoding="utf-8"), path.name)
    return entries


def slow_tests() -> list[str]:
    """The test ids a quick run leaves out (``expectations/_slow.txt``), each with its reason."""
    path = EXPECTATIONS_DIR / f"{SLOW}.txt"
    if not path.is_file():
        return []
    return [entry.pattern for entry in parse_list(path.read_text(encoding="utf-8"), path.name)]


def parse(text: str, name: str) -> list[Expectation]:
    return parse_list(text, name, outcomes=(*OUTCOMES, FLAKE, MISSING))


@dataclass
class Comparison:
    """A profile's run against plain PoCL's, judged by the expectations."""

    expected: list[tuple[str, str, str, Expectation]] = field(default_factory=list)  # test, plain, seen, entry
    unexpected: list[tuple[str, str, str]] = field(default_factory=list)  # test, plain, seen
    stale: list[Expectation] = field(default_factory=list)  # entries whose tests ran and did not differ so

    @property
    def ok(self) -> bool:
        return not self.unexpected and not self.stale


def compare(plain: SuiteRun, seen: SuiteRun, expectations: list[Expectation]) -> Comparison:
    """Every test either run reached (``missing`` where the other did not): the same outcome, or a difference an
    entry names."""
    result = Comparison()
    used: set[Expectation] = set()
    judged: set[Expectation] = set()
    for test in sorted(plain.outcomes.keys() | seen.outcomes.keys()):
        before, after = plain.outcomes.get(test, MISSING), seen.outcomes.get(test, MISSING)
        entries = [e for e in expectations if e.matches(test)]
        flake = next((e for e in entries if e.outcome == FLAKE), None)
        if flake is not None:  # either outcome is right, and the test's other entries are not judged by it
            used.add(flake)
            if before != after:
                result.expected.append((test, before, after, flake))
            continue
        judged.update(entries)
        entry = next((e for e in entries if e.outcome == after), None)
        if before == after:
            continue
        if entry is None:
            result.unexpected.append((test, before, after))
        else:
            used.add(entry)
            result.expected.append((test, before, after, entry))
    result.stale = [e for e in expectations if e in judged and e not in used and e.outcome != FLAKE]
    return result
