"""`mali-hil doctor`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("doctor", help="check what the emulated Mali needs; print the fix for what is missing")
    parser.set_defaults(func=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    from mali_hil.emulator.doctor import run_checks

    failed = 0
    for check in run_checks():
        print(check.line(), flush=True)
        failed += not check.ok
    return 1 if failed else 0
