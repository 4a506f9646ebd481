"""`mali-hil farm run|janitor|health|expectations`: the nightly board farm on labgrid."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_EXIT = {"PASS": 0, "SKIP": 0, "FAIL": 1, "ERROR": 1, "MISS": 3}


def register(sub: argparse._SubParsersAction) -> None:
    from mali_hil.harness.cli.args import seconds

    farm = sub.add_parser("farm", help="the board farm on labgrid: the suite on every matching board; stale locks")
    groups = farm.add_subparsers(dest="farm_command", required=True, metavar="FARM_COMMAND")
    run = groups.add_parser("run", help="run the suite on every matching board at once; per-board JUnit, a combined "
                            "JSON and Markdown summary, and the diff against the previous run")  # fmt: skip
    run.add_argument("--coordinator", default=None, help="labgrid coordinator HOST:PORT (default: LG_COORDINATOR)")
    run.add_argument("--match", action="append", default=[], metavar="TAG=VALUE",
                     help="only places with these tags (repeatable; default every place)")  # fmt: skip
    run.add_argument("--parallel", type=_positive, default=None, help="boards at once (default: all)")
    run.add_argument("--retries", type=_count, default=2,
                     help="re-runs of tests the infrastructure kept from running (MISS); default 2")  # fmt: skip
    run.add_argument("--reruns", type=_count, default=2,
                     help="runs again, on the same board, of a test that failed with no expectations entry saying it "
                     "may: one that then passes is a FLAKE, not a PASS nor a FAIL; default 2")  # fmt: skip
    run.add_argument("--expectations", type=Path, default=None, metavar="DIR",
                     help="the folder of each board family's FAMILY-{fails,flakes,skips}.txt (family: the place's "
                     "expectations tag, else its gpu tag); default: the lists mali-hil ships")  # fmt: skip
    run.add_argument("--wait", type=seconds, default=600.0, help="seconds to wait for a busy board (default 600)")
    run.add_argument(
        "--device-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an SSH device option for every board (emulate=, ssh_config=, workdir=, python=, ...)",
    )
    run.add_argument("--no-health-check", dest="health_check", action="store_false",
                     help="do not check each board before its run (marked boards are still skipped)")  # fmt: skip
    run.add_argument("--unhealthy-after", type=_positive, default=3, metavar="N",
                     help="mark a board unhealthy after N runs in a row ended in infrastructure errors "
                     "(default 3)")  # fmt: skip
    run.add_argument("--previous", type=Path, default=None,
                     help="the summary.json to diff against (default: the one already in -o)")  # fmt: skip
    run.add_argument("-o", "--out", type=Path, default=Path("farm-report"), help="report folder (default farm-report)")
    run.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: pytest arguments for every board "
                     "(e.g. -- -k numerics --loader=chunked)")  # fmt: skip
    run.set_defaults(func=_run)
    update = groups.add_parser("expectations", help="edit the expectations lists to what a run saw, for review: "
                               "new failures and repeated flakes added, passing known failures removed")  # fmt: skip
    update.add_argument("summary", type=Path, help="the run's summary.json")
    update.add_argument("--expectations", type=Path, default=None, metavar="DIR",
                        help="the lists' folder the run used (default: the lists mali-hil ships)")  # fmt: skip
    update.set_defaults(func=_update)
    janitor = groups.add_parser("janitor", help="free locks of mali-hil runs on this host whose process is gone")
    janitor.add_argument("--coordinator", default=None, help="labgrid coordinator HOST:PORT (default: LG_COORDINATOR)")
    janitor.add_argument("--dry-run", action="store_true", help="say what would be freed; free nothing")
    janitor.set_defaults(func=_janitor)
    check = groups.add_parser("health", help="show which boards are marked unhealthy and why; clear a mark")
    check.add_argument("--coordinator", default=None, help="labgrid coordinator HOST:PORT (default: LG_COORDINATOR)")
    check.add_argument("--reset", action="append", default=[], metavar="PLACE",
                       help="clear PLACE's mark and its count of infrastructure errors (repeatable)")  # fmt: skip
    check.set_defaults(func=_health)


def _run(args: argparse.Namespace) -> int:
    from mali_hil.harness.farm.failures import FarmError
    from mali_hil.harness.farm.lease import install_sigterm_cleanup
    from mali_hil.harness.farm.runner import FarmOptions, parse_pairs, run_farm

    install_sigterm_cleanup()  # a cancelled CI job (SIGTERM) unwinds like Ctrl-C: children stopped, locks freed
    options = dict(pair.partition("=")[::2] for pair in args.device_option)
    if any(not name or not value for name, value in options.items()):
        raise FarmError("--device-option: write NAME=VALUE, e.g. emulate=mali-g610:3GiB")
    report = run_farm(FarmOptions(
        out=args.out, coordinator=args.coordinator, match=parse_pairs(args.match, "--match"),
        parallel=args.parallel, retries=args.retries, reruns=args.reruns, expectations=args.expectations,
        wait=args.wait, device_options=options,
        pytest_args=[a for a in args.pytest_args if a != "--"], previous=args.previous,
        health_check=args.health_check, unhealthy_after=args.unhealthy_after,
    ))  # fmt: skip
    print((args.out / "summary.md").read_text(encoding="utf-8"))
    print(f"reports: {args.out / 'summary.json'}, {args.out / 'summary.md'}, {args.out / 'kcidb.json'} (KCIDB), "
          f"{args.out / 'boards'}/*/*.xml")
    return _EXIT[report["status"]]


def _update(args: argparse.Namespace) -> int:
    from mali_hil.harness.farm.expectations import update
    from mali_hil.harness.farm.failures import FarmError
    from mali_hil.harness.farm.summary import load_previous

    report = load_previous(args.summary)
    if report is None:
        raise FarmError(f"no summary at {args.summary}: give a farm run's summary.json")
    for change in update(report, args.expectations):
        print(change)
    print("review the lists' diff (git diff) and finish each REVIEW: reason before committing")
    return 0


def _janitor(args: argparse.Namespace) -> int:
    from mali_hil.harness.farm.client import LabgridClient
    from mali_hil.harness.farm.janitor import sweep

    verdicts = sweep(LabgridClient(args.coordinator), dry_run=args.dry_run)
    for verdict in verdicts:
        print(f"{verdict.action:10} {verdict.place}: {verdict.holder} ({verdict.why})")
    if not verdicts:
        print("no place is locked")
    sys.stdout.flush()
    return 0


def _health(args: argparse.Namespace) -> int:
    from mali_hil.harness.farm import health
    from mali_hil.harness.farm.client import LabgridClient
    from mali_hil.harness.farm.failures import PlaceError

    client = LabgridClient(args.coordinator)
    places = {place.name: place for place in client.places()}
    unknown = [name for name in args.reset if name not in places]
    if unknown:
        raise PlaceError(f"--reset: no place {', '.join(unknown)} at {client.where} (places: {', '.join(places)})")
    for name in args.reset:
        health.reset(client, places[name])
        print(f"reset      {name}: its next run checks it again")
    if args.reset:
        places = {place.name: place for place in client.places()}
    for name, place in sorted(places.items()):
        streak = place.tags.get(health.STREAK_TAG)
        after = f" ({streak} run(s) in a row ended in infrastructure errors)" if streak else ""
        if health.unhealthy(place):
            print(f"unhealthy  {name}: {health.why_unhealthy(place)}")
        else:
            print(f"ok         {name}{after}")
    if not places:
        print("no place at all")
    sys.stdout.flush()
    return 0


def _positive(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be from 0 to 100, got {text!r}")
    return value
