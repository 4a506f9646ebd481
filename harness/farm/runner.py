"""``mali-hil farm run``: the suite on every matching board at once, one pytest process per board.

Why a process per board and not pytest-xdist: xdist's ``--dist=each`` runs one collection on every node, but each
board needs its own ``--device`` (its own test ids), its own lease and lock identity, its own JUnit file and exit
status, and a retry of just its own infrastructure misses; one board's crash or SIGKILL must not take the others'
results with it. A process per board gives all of that with nothing but pytest; the boards run in parallel
(``--parallel``), each child holding only its own board.

Retries: a test the infrastructure kept from running (MISS: board down, reservation timeout, SSH lost after the
device's own retries) is run again, up to ``--retries`` more attempts, in a new child that re-reserves the board;
tests that ran (PASS, FAIL, ERROR, SKIP) are never run again, so a FAIL is never retried into a PASS and no
finished result is lost.

Reruns: a test that FAILed or ERRORed with no entry in its board family's expectations saying it may is run again
on the same board (``--reruns``); one that then passes is a FLAKE. The verdicts against the lists
(harness/farm/expectations.py) decide each board's status; the run is written as summary.json, summary.md and, for
dashboards, kcidb.json (harness/farm/kcidb.py).

Health (:mod:`.health`): a place marked unhealthy in labgrid is skipped (SKIP, with the mark's reason); every
other board is checked before its run, and one that fails the check is marked and not run (MISS); a board whose
runs end in infrastructure errors ``--unhealthy-after`` times in a row is marked too.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from mali_hil.harness.devices.labgrid import LEASES_ENV
from mali_hil.harness.farm import expectations as farm_expectations
from mali_hil.harness.farm import health, kcidb, summary
from mali_hil.harness.farm.client import LabgridClient, Place
from mali_hil.harness.farm.expectations import Expected
from mali_hil.harness.farm.failures import CoordinatorError, FarmError, PlaceError
from mali_hil.harness.farm.identity import RunIdentity
from mali_hil.harness.farm.outcomes import OUTCOMES_ENV, SKIPS_ENV

STOP_GRACE = 60.0  # seconds children get, after a SIGTERM, to stop their workers, write reports and release
_NOT_RUN = {2: "interrupted", 3: "pytest internal error", 4: "pytest usage error", 5: "no tests collected"}


@dataclass
class FarmOptions:
    out: Path
    coordinator: str | None = None
    match: dict[str, str] = field(default_factory=dict)
    parallel: int | None = None
    retries: int = 2
    reruns: int = 2  # runs again of a test that failed unexpectedly, to tell a flake from a failure
    expectations: Path | None = None  # the folder of the families' lists (default: the packaged ones)
    wait: float = 600.0
    device_options: dict[str, str] = field(default_factory=dict)  # the SSH device's (emulate, ssh_config, ...)
    pytest_args: list[str] = field(default_factory=list)
    previous: Path | None = None
    health_check: bool = True  # check each board before its run (health.check_board)
    unhealthy_after: int = 3  # consecutive runs ending in infrastructure errors that mark a board unhealthy


class _Children:
    """The per-board pytest processes alive now, so an interrupt can stop them and sweep their locks."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: dict[int, subprocess.Popen[bytes]] = {}
        self.identities: list[RunIdentity] = []
        self.stopping = False

    def terminate(self) -> None:
        with self.lock:
            self.stopping = True
            procs = list(self.running.values())
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # each child releases its own lease on the way out
        deadline = time.monotonic() + STOP_GRACE
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_farm(options: FarmOptions) -> dict[str, Any]:
    client = LabgridClient(options.coordinator)
    places = [place for place in client.places() if place.matches(options.match)]
    if not places:
        wanted = ",".join(f"{k}={v}" for k, v in options.match.items()) or "any place"
        raise PlaceError(f"no place at {client.where} matches {wanted}: see `labgrid-client -v places`")
    options.out.mkdir(parents=True, exist_ok=True)
    summary_path = options.out / "summary.json"
    previous_path = options.previous or summary_path
    previous = summary.load_previous(previous_path)
    started, wall0, cpu0 = datetime.now(UTC), time.monotonic(), _children_cpu()
    children = _Children()
    boards: dict[str, dict[str, Any]] = {
        place.name: {"status": "MISS", "tags": place.tags, "attempts": [], "tests": {}, "infra": "not started"}
        for place in places
    }
    expected = {place.name: _expectations_of(options, place.name, boards[place.name]) for place in places}
    skipped = {place.name: health.why_unhealthy(place) for place in places if health.unhealthy(place)}
    for name, why in skipped.items():
        clear = f"mali-hil farm health --reset {name}"
        boards[name].update(status="SKIP", skipped=why, infra=f"skipped, marked unhealthy (clear: {clear}): {why}")
    to_run = [place for place in places if place.name not in skipped]
    interrupted = False
    pool = ThreadPoolExecutor(max_workers=options.parallel or max(1, len(to_run)), thread_name_prefix="farm-board")
    try:
        futures = [pool.submit(_run_checked_board, options, client, place, boards[place.name], children,
                               expected[place.name]) for place in to_run]  # fmt: skip
        for future in futures:
            future.result()
    except KeyboardInterrupt:
        interrupted = True
        children.terminate()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _sweep(client, children)
    report = {
        "schema": summary.SCHEMA, "started": started.isoformat(timespec="seconds"),
        "coordinator": client.where, "match": ",".join(f"{k}={v}" for k, v in options.match.items()),
        "wall_s": round(time.monotonic() - wall0, 2), "children_cpu_s": round(_children_cpu() - cpu0, 2),
        "interrupted": interrupted, "boards": boards, "totals": summary.totals(boards),
    }  # fmt: skip
    report["skipped_boards"] = skipped
    statuses = [board["status"] for name, board in boards.items() if name not in skipped]
    # every matching board skipped: nothing ran, which is not a pass
    report["status"] = next((s for s in ("FAIL", "ERROR", "MISS") if s in statuses), "PASS") if statuses else "MISS"
    report["previous"] = str(previous_path) if previous is not None else None
    report["diff"] = summary.diff(previous, report)
    report["proposed_flakes"] = farm_expectations.propose_flakes(boards, previous)
    if previous is not None and previous_path == summary_path:
        summary_path.replace(options.out / "summary.previous.json")
    summary_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (options.out / "summary.md").write_text(summary.markdown(report), encoding="utf-8")
    kcidb.write(report, options.out / kcidb.FILE)
    if interrupted:
        raise KeyboardInterrupt
    return report


def _run_checked_board(options: FarmOptions, client: LabgridClient, place: Place, board: dict[str, Any],
                       children: _Children, expected: Expected) -> None:  # fmt: skip
    """The board's health check, its run if it passed, then its count of runs ended by the infrastructure."""
    try:
        if options.health_check:
            verdict = health.check_board(place, client.coordinator, options.device_options,
                                         min(options.wait, health.CHECK_WAIT))  # fmt: skip
            board["health"] = verdict.to_dict()
            if verdict.judged and not verdict.ok:
                board["marked_unhealthy"] = health.mark(client, place, f"health check: {verdict.reason}")
                board["infra"] = f"health check failed, marked unhealthy: {verdict.reason}"
                return
        _run_board(options, client, place.name, board, children, expected)
        if not children.stopping:
            infra = (board["infra"] or "tests missed") if board["status"] == "MISS" else None
            board["marked_unhealthy"] = health.count_run(client, place, infra, options.unhealthy_after)
    except CoordinatorError as exc:  # the mark could not be written: the run's own results still count
        board["health_error"] = str(exc)


def _run_board(options: FarmOptions, client: LabgridClient, place: str, board: dict[str, Any],
               children: _Children, expected: Expected) -> None:  # fmt: skip
    folder = options.out / "boards" / place
    query = urlencode({**options.device_options, "wait": f"{options.wait:g}"}, safe="/:")
    device = f"labgrid:{place}?{query}"
    pending: list[str] | None = None  # None: the whole selection; else the node ids the infrastructure missed
    for attempt in range(1, options.retries + 2):
        if children.stopping:
            return
        ran = _child(client, device, folder, f"attempt-{attempt}", pending or [str(_suite())], options, children)
        if ran is None:
            return
        code, tests, entry = ran
        entry["attempt"] = attempt
        board["lock_lost"] = board.get("lock_lost", False) or any(lease["lock_lost"] for lease in entry["leases"])
        board["attempts"].append(entry)
        for name, data in tests.items():
            data["attempts"] = attempt
            board["tests"][name] = data  # a retry only reruns MISSes: it replaces nothing that ran
        board["infra"] = None
        if not tests:
            why = _NOT_RUN.get(code, f"pytest ended with {code} before any test reported")
            board["infra"] = f"attempt {attempt}: {why}; see {entry['log']}: {_tail(Path(entry['log']))}"
            if code in (3, 4, 5):  # the selection or the setup is wrong: rerunning cannot help
                board["status"] = "ERROR"
                return
            pending = None
            continue
        missed = [data["nodeid"] for data in board["tests"].values() if data["status"] == "MISS"]
        if not missed:
            break
        pending = missed
    _rerun_failures(options, client, device, folder, board, expected, children)
    farm_expectations.judge(board["tests"], expected)
    board["status"] = summary.board_status(board["tests"], infra=board["infra"])


def _expectations_of(options: FarmOptions, place: str, board: dict[str, Any]) -> Expected:
    """The board family's lists (a malformed one is refused here, before any board is reserved); its skips go to
    the children as a file the outcomes plugin reads."""
    expected = farm_expectations.load(options.expectations, farm_expectations.family_of(place, board["tags"]))
    board["family"], board["expectations"], board["reruns"] = expected.family, expected.files, []
    folder = options.out / "boards" / place
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "skips.json").write_text(json.dumps([vars(entry) for entry in expected.skips]), encoding="utf-8")
    return expected


def _rerun_failures(options: FarmOptions, client: LabgridClient, device: str, folder: Path, board: dict[str, Any],
                    expected: Expected, children: _Children) -> None:  # fmt: skip
    """Tests that failed with no entry saying they may are run again (only they), on the same board, up to
    ``options.reruns`` times: one that then passes is a FLAKE (its runs in ``history``), never a PASS; one that
    never does keeps its first failure. A rerun the infrastructure kept from reaching a test leaves it failing."""
    for rerun in range(1, options.reruns + 1):
        failing = farm_expectations.to_rerun(board["tests"], expected)
        if not failing or children.stopping:
            return
        selection = [board["tests"][key]["nodeid"] for key in failing]
        ran = _child(client, device, folder, f"rerun-{rerun}", selection, options, children)
        if ran is None:
            return
        _, tests, entry = ran
        board["lock_lost"] = board.get("lock_lost", False) or any(lease["lock_lost"] for lease in entry["leases"])
        board["reruns"].append(entry)
        for key in failing:
            again = tests.get(key)
            if again is None:
                continue
            test = board["tests"][key]
            test["history"] += again["history"]
            if again["status"] == "PASS":
                test["status"] = "FLAKE"


def _child(client: LabgridClient, device: str, folder: Path, label: str, selection: list[str],
           options: FarmOptions, children: _Children) -> tuple[int, dict[str, dict[str, Any]], dict[str, Any]] | None:
    """One pytest process on the board for ``selection``: its exit code, its tests, and its record (None: the
    run is stopping and it was not started)."""
    outcomes = folder / f"{label}.outcomes.jsonl"
    outcomes.unlink(missing_ok=True)
    from mali_hil.runtime.supervisor import safe_python

    python, safe_env = safe_python(sys.executable)  # the current folder off sys.path, as for `mali-hil run`
    argv = [*python, "-m", "pytest", *selection, "-q", "-p", "no:cacheprovider",
            "-p", "mali_hil.harness.farm.outcomes", f"--rootdir={_suite()}", f"--device={device}",
            f"--junitxml={folder / f'{label}.xml'}",
            f"--mali-hil-results={folder / f'{label}.results.jsonl'}", *options.pytest_args]  # fmt: skip
    leases = folder / f"{label}.leases.jsonl"
    env = {**safe_env, OUTCOMES_ENV: str(outcomes), LEASES_ENV: str(leases), "GRPC_ENABLE_FORK_SUPPORT": "0",
           SKIPS_ENV: str(folder / "skips.json")}  # fmt: skip
    if client.coordinator:
        env["LG_COORDINATOR"] = client.coordinator
    began = time.monotonic()
    with open(folder / f"{label}.log", "wb") as log:
        with children.lock:
            if children.stopping:
                return None
            proc = subprocess.Popen(argv, cwd=_suite(), env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)  # fmt: skip
            children.running[proc.pid] = proc
            with contextlib.suppress(ProcessLookupError):
                children.identities.append(RunIdentity.of_process(proc.pid))
        code, cpu = _wait(proc)
        with children.lock:
            children.running.pop(proc.pid, None)
    tests = _read_outcomes(outcomes, device, label)
    entry = {"returncode": code, "wall_s": round(time.monotonic() - began, 2), "cpu_s": round(cpu, 2),
             "ran": len(tests), "junit": str(folder / f"{label}.xml"), "log": str(folder / f"{label}.log"),
             "leases": [json.loads(line) for line in _lines(leases)]}  # fmt: skip
    return code, tests, entry


def _read_outcomes(path: Path, device: str, label: str) -> dict[str, dict[str, Any]]:
    """Test -> its record; the key names the test without this run's device text (stable across nights)."""
    found: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return found
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            data = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill: that test has no complete record
        key = data["test"].replace(device, "{device}")
        found[key] = {"status": data["status"], "message": data.get("message", ""),
                      "duration_s": data.get("duration_s"), "nodeid": data["test"],
                      "history": [{"run": label, "status": data["status"], "duration_s": data.get("duration_s")}]}
    return found


def _lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip().endswith("}")]
    except OSError:
        return []


def _sweep(client: LabgridClient, children: _Children) -> None:
    """After every child ended: free a lock any of them still holds (one killed before it could release)."""
    holders = {identity.holder for identity in children.identities}
    try:
        for place in client.places():
            if place.acquired in holders:
                client.release_from(place.name, place.acquired)
    except CoordinatorError as exc:
        print(
            f"mali-hil: warning: could not check the children's locks: {exc}; run `mali-hil farm janitor`",
            file=sys.stderr,
        )


def _wait(proc: subprocess.Popen[bytes]) -> tuple[int, float]:
    """Wait for a child and return its exit code and CPU seconds (wait4's own accounting, per child)."""
    while True:
        try:
            _, status, usage = os.wait4(proc.pid, 0)
            break
        except ChildProcessError:  # reaped elsewhere (Popen.wait in terminate())
            return proc.wait(), 0.0
        except InterruptedError:
            continue
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _tail(path: Path, limit: int = 300) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-3:])[-limit:]


def _suite() -> Path:
    from mali_hil.harness.plugin.suite import suite_path

    return suite_path()


def parse_pairs(values: Sequence[str], what: str) -> dict[str, str]:
    """``["gpu=mali-g610", "board=rock5b,ram=3g"]`` -> tags; refused with the value named."""
    from mali_hil.harness.farm.client import parse_selector

    pairs: dict[str, str] = {}
    for value in values:
        if "=" not in value:
            raise FarmError(f"{what} {value!r}: write TAG=VALUE")
        pairs.update(parse_selector(value))
    return pairs
