"""Expectation lists kept in the repository, in the style of Mesa's ``*-fails.txt``, ``*-flakes.txt`` and
``*-skips.txt``: one entry a line, ``TEST[,OUTCOME]  # reason, since YYYY-MM-DD``, blank lines and ``#`` lines
ignored. TEST is a test id or ``re:REGEX`` matched against the whole id. Every entry needs its reason, so a list
says why each test is in it. One parser and matcher for every list mali-hil keeps: the emulator's external-suite
check (emulator/conformance/expectations/) and the board farm's (harness/farm/expectations/)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from mali_hil.errors import ExpectationsError


@dataclass(frozen=True)
class Expectation:
    pattern: str
    outcome: str  # "" in a list whose lines name no outcome (flakes, skips)
    reason: str
    where: str  # file:line, for reports and errors

    def matches(self, test: str) -> bool:
        if self.pattern.startswith("re:"):
            return re.fullmatch(self.pattern[3:], test) is not None
        return test == self.pattern


def parse(text: str, name: str, outcomes: Iterable[str] | None = None) -> list[Expectation]:
    """The entries of one list. With ``outcomes``, each line is ``TEST,OUTCOME`` (the outcome after the last
    comma, one of ``outcomes``); without, the whole line before ``#`` is the test."""
    allowed = tuple(outcomes) if outcomes is not None else None
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        body, _, reason = line.partition("#")
        where = f"{name}:{number}"
        test, outcome = body.strip(), ""
        if allowed is not None:
            test, comma, outcome = test.rpartition(",")
            if not comma or not test or outcome not in allowed:
                raise ExpectationsError(f"{where}: want TEST,OUTCOME (one of {', '.join(allowed)}), got {raw!r}")
        if not reason.strip():
            raise ExpectationsError(f"{where}: every entry needs its reason after '#': {raw!r}")
        if test.startswith("re:"):
            try:
                re.compile(test[3:])
            except re.error as exc:
                raise ExpectationsError(f"{where}: bad regular expression {test[3:]!r}: {exc}") from None
        entries.append(Expectation(test, outcome, reason.strip(), where))
    return entries


def first_match(entries: Iterable[Expectation], test: str) -> Expectation | None:
    return next((entry for entry in entries if entry.matches(test)), None)
