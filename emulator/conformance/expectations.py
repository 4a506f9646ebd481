"""Expected differences from plain PoCL, per profile, as data: ``expectations/PROFILE.txt`` (and ``_all.txt``,
for every profile), reviewed like code, as Mesa keeps its per-GPU fails, flakes and skips lists.

One entry a line: ``TEST,OUTCOME  # reason (source), since YYYY-MM-DD``. TEST is ``suite::nodeid``, or
``re:REGEX`` matched against the whole id; OUTCOME is what the test does on the profile (``fail``, ``skip``,
``crash``, ``oom``, ...), or ``flake`` for a test whose outcome may differ either way. Every entry needs its
reason. A difference no entry names is unexpected; an entry whose tests ran and did not differ so is stale: both
fail the check, so the files stay true.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from mali_hil.emulator.conformance.run import OUTCOMES, SuiteRun
from mali_hil.errors import ProfileError

EXPECTATIONS_DIR = Path(__file__).parent / "expectations"
COMMON = "_all"
SLOW = "_slow"  # tests a quick run leaves to the nightly: ``TEST  # reason`` a line
FLAKE = "flake"
MISSING = "missing"  # a test one run reached and the other did not (its id differs, or it was never collected)


@dataclass(frozen=True)
class Expectation:
    pattern: str
    outcome: str
    reason: str
    where: str  # file:line, for the report

    def matches(self, test: str) -> bool:
        if self.pattern.startswith("re:"):
            return re.fullmatch(self.pattern[3:], test) is not None
        return test == self.pattern


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
    tests = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines() if path.is_file() else [], 1):
        test, _, reason = raw.strip().partition("#")
        if test.strip() and not reason.strip():
            raise ProfileError(f"{path.name}:{number}: a slow test needs its reason (e.g. its seconds) after '#'")
        if test.strip():
            tests.append(test.strip())
    return tests


def parse(text: str, name: str) -> list[Expectation]:
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        body, _, reason = line.partition("#")
        test, comma, outcome = body.strip().rpartition(",")
        where = f"{name}:{number}"
        if not comma or not test or outcome not in (*OUTCOMES, FLAKE, MISSING):
            choices = ", ".join((*OUTCOMES, FLAKE, MISSING))
            raise ProfileError(f"{where}: want TEST,OUTCOME (one of {choices}), got {raw!r}")
        if not reason.strip():
            raise ProfileError(f"{where}: every expected difference needs its reason after '#': {raw!r}")
        if test.startswith("re:"):
            try:
                re.compile(test[3:])
            except re.error as exc:
                raise ProfileError(f"{where}: bad regular expression {test[3:]!r}: {exc}") from None
        entries.append(Expectation(test, outcome, reason.strip(), where))
    return entries


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
