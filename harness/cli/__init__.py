"""The ``mali-hil`` command. Each command group lives in its own module with a ``register(subparsers)``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mali_hil.errors import MaliHilError

# Command-group modules, in the order `mali-hil --help` lists them.
_GROUPS = ("run", "load", "fit", "checkpoint", "emulator", "board", "doctor", "cluster", "threshold", "report",
           "farm")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mali-hil", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    import importlib

    for name in _GROUPS:
        importlib.import_module(f"mali_hil.harness.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MaliHilError as exc:
        print(f"mali-hil: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
