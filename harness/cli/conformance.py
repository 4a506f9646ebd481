"""``mali-hil emulator conformance`` and ``mali-hil emulator probe``: the emulated Mali judged by test suites nobody
here wrote, and by an allocation probe in the style of the OpenCL CTS, each checked per profile."""

from __future__ import annotations

import argparse
import json
from typing import Any

DEFAULT_BOARDS = ("mali-g610:3GiB", "mali-g52:1GiB")
PROBE_HELP = "allocation probe (OpenCL CTS style): max allocation used, one byte more, fill until refused or killed"
PROBE_DESCRIPTION = (
    "Run the allocation probe on the board, each step in a process of its own, and check it against the profile: "
    "the max-allocation buffer works, one byte more gets the profile's code, buffers fill the cap (or the board's "
    "RAM) and no more, sub-buffers add nothing, an image above max allocation is refused."
)


def register(actions: Any) -> None:
    check = actions.add_parser(
        "conformance",
        help="run external test suites (pyopencl's, tinygrad's) on plain PoCL and on boards; check the differences",
        description="Run each suite from its sdist (the installed version, fetched once from the package index) on "
        "plain PoCL and on each board, and compare: every difference must be listed, with its reason, in the "
        "profile's expectations file (emulator/conformance/expectations/PROFILE.txt). Exit 1 on a difference the "
        "file does not list, or a listed one that no longer happens.",
    )
    check.add_argument("boards", nargs="*", metavar="PROFILE[:RAM]", help=f"default: {' '.join(DEFAULT_BOARDS)}")
    check.add_argument("--suite", action="append", metavar="NAME", help="pyopencl or tinygrad (default: both)")
    check.add_argument("--fraction", type=int, default=1, metavar="M", help="run every M-th test (deqp-runner style)")
    check.add_argument("--fraction-start", type=int, default=1, metavar="N", help="starting at the N-th (1-based)")
    check.add_argument("--quick", action="store_true", help="leave out the slow tests (expectations/_slow.txt)")
    check.add_argument("--json", default=None, metavar="FILE", help="write every outcome and verdict as JSON")
    check.set_defaults(func=_conformance)

    probe = actions.add_parser("probe", help=PROBE_HELP, description=PROBE_DESCRIPTION)
    probe.add_argument("board", metavar="PROFILE[:RAM]", help="e.g. mali-g52:1GiB")
    probe.add_argument("--sizes", default="128MiB,32MiB", metavar="S,S", help="buffer sizes to fill with")
    probe.add_argument("--json", action="store_true", help="machine-readable output")
    probe.set_defaults(func=_probe)


def _conformance(args: argparse.Namespace) -> int:
    from mali_hil.emulator.conformance.expectations import compare, load_expectations, slow_tests
    from mali_hil.emulator.conformance.run import PLAIN, SUITES, run_suite
    from mali_hil.emulator.profile import load_profile
    from mali_hil.errors import ProfileError

    names = args.suite or list(SUITES)
    if unknown := [n for n in names if n not in SUITES]:
        raise ProfileError(f"unknown suite {unknown[0]!r}: the suites are {', '.join(SUITES)}")
    if not 1 <= args.fraction_start <= args.fraction:
        raise ProfileError(f"--fraction-start must be 1..{args.fraction}, got {args.fraction_start}")
    boards = [load_profile(spec) for spec in args.boards or DEFAULT_BOARDS]  # bad names fail before any run
    fraction = (args.fraction_start, args.fraction)
    deselect = frozenset(slow_tests()) if args.quick else frozenset()
    report: dict[str, Any] = {"fraction": list(fraction), "quick": args.quick, "runs": [], "verdicts": []}
    ok = True
    for name in names:
        plain = run_suite(SUITES[name], PLAIN, fraction, deselect)
        report["runs"].append(_run_record(plain))
        print(f"{name} on {PLAIN}: {_counts(plain.counts())} ({plain.seconds:.0f} s)", flush=True)
        for profile in boards:
            seen = run_suite(SUITES[name], profile.spec, fraction, deselect)
            verdict = compare(plain, seen, load_expectations(profile.key))
            ok &= verdict.ok
            report["runs"].append(_run_record(seen))
            report["verdicts"].append(_verdict_record(name, profile.spec, verdict))
            state = "ok" if verdict.ok else "FAIL"
            print(f"{name} on {profile.spec}: {_counts(seen.counts())} ({seen.seconds:.0f} s, {seen.sessions} "
                  f"session(s)); {len(verdict.expected)} expected differences: {state}", flush=True)  # fmt: skip
            for test, before, after in verdict.unexpected:
                print(f"  unexpected: {test}: {before} on {PLAIN}, {after} here (not in the expectations)")
            for entry in verdict.stale:
                print(f"  stale: {entry.where}: {entry.pattern},{entry.outcome} no longer happens ({entry.reason})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=1)
    return 0 if ok else 1


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {outcome}" for outcome, n in counts.items()) or "no tests"


def _run_record(run: Any) -> dict[str, Any]:
    return {"suite": run.suite, "target": run.target, "counts": run.counts(), "seconds": round(run.seconds, 1),
            "sessions": run.sessions, "outcomes": run.outcomes}  # fmt: skip


def _verdict_record(suite: str, board: str, verdict: Any) -> dict[str, Any]:
    return {
        "suite": suite, "board": board, "ok": verdict.ok,
        "expected": [[t, b, a, e.reason] for t, b, a, e in verdict.expected],
        "unexpected": [list(row) for row in verdict.unexpected],
        "stale": [f"{e.where}: {e.pattern},{e.outcome}" for e in verdict.stale],
    }  # fmt: skip


def _probe(args: argparse.Namespace) -> int:
    from mali_hil.emulator.alloc_probe import check, probe
    from mali_hil.emulator.emulated_board import EmulatedBoard

    board = EmulatedBoard.from_spec(args.board)
    result = probe(board, tuple(s for s in args.sizes.split(",") if s))
    problems = check(board, result)
    if args.json:
        print(json.dumps({**result.to_dict(), "problems": problems}))
    else:
        print(f"{result.board}: max allocation {result.max_alloc} bytes used: {result.max_alloc_used or 'ok'}; "
              f"one byte more: {result.over_max_alloc or 'accepted'}")  # fmt: skip
        for fill in result.fills:
            print(f"  {fill.size >> 20} MiB buffers: {fill.buffers} ({(fill.buffers * fill.size) >> 20} MiB), then "
                  f"{fill.ending}")  # fmt: skip
        print(f"  views: {result.views}")
        print("  " + ("as the profile says" if not problems else "NOT as the profile says: " + "; ".join(problems)))
    return 0 if not problems else 1
