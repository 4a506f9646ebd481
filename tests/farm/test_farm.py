"""The board farm against a real labgrid coordinator and exporter on 127.0.0.1 (tests/labgrid_farm.py), exporting
boards that are real local sshds running the emulated Mali (``emulate=``): one healthy, one whose sshd is not
running, one whose connection is cut mid-job, one whose place names another GPU than it has (its health check
fails), and a spare place for the lock tests.

The suite on each board is one quick property (``-k test_f32_edge_cases --loader=chunked``), to keep CI short.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from mali_hil.errors import DeviceSpecError
from mali_hil.harness.cli import main
from mali_hil.harness.devices import DeviceSpec
from mali_hil.harness.devices.labgrid import PLACE_ENV
from mali_hil.harness.devices.labgrid import make as make_labgrid
from mali_hil.harness.farm import health
from mali_hil.harness.farm.client import LabgridClient, Place
from mali_hil.harness.farm.failures import CoordinatorError, ReservationTimeout
from mali_hil.harness.farm.health import HEALTH_TAG, STREAK_TAG, check_board
from mali_hil.harness.farm.janitor import sweep
from mali_hil.harness.farm.lease import Lease
from mali_hil.harness.farm.summary import diff
from mali_hil.harness.transports.ssh import SshTransport
from mali_hil.harness.transports.ssh_target import SshTarget
from tests.labgrid_farm import LabgridFarm, labgrid_available
from tests.sshd import LoopbackBoard, _children, _cmdline, _comm, board_python, sshd_available, watch_workers

pytestmark = [
    pytest.mark.skipif(sshd_available() is not None, reason=str(sshd_available())),
    pytest.mark.skipif(labgrid_available() is not None, reason=str(labgrid_available())),
]
ROOT = Path(__file__).resolve().parents[2]
EMULATE = "mali-g52:512MiB"
SUBSET = ["-k", "test_f32_edge_cases", "--loader=chunked"]
# "sick" runs the same emulated G52 as the others, but its place says gpu=mali-t860: its health check fails
TAGS = {"healthy": {"gpu": "mali-g52", "role": "nightly", "shelf": "two"},
        "down": {"gpu": "mali-g52", "role": "nightly"}, "flaky": {"gpu": "mali-g52", "role": "nightly"},
        "spare": {"gpu": "mali-g610", "role": "spare"}, "sick": {"gpu": "mali-t860", "shelf": "two"}}  # fmt: skip


@pytest.fixture(scope="module")
def boards(tmp_path_factory: pytest.TempPathFactory, board_disk: Path) -> Iterator[dict[str, LoopbackBoard]]:
    disk = board_disk  # one disk for all boards: mali-hil is installed there once
    made = {name: LoopbackBoard(tmp_path_factory.mktemp(f"sshd-{name}"), name) for name in TAGS}
    for name, board in made.items():
        board.workdir = disk
        if name != "down":  # its sshd never runs: a board that is off
            board.start()
    yield made
    for board in made.values():
        board.stop()


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory, boards: dict[str, LoopbackBoard]) -> Iterator[LabgridFarm]:
    lab = LabgridFarm(tmp_path_factory.mktemp("lab"), boards)
    try:
        yield lab.start(TAGS)
    finally:
        lab.stop()


def options(farm: LabgridFarm, boards: dict[str, LoopbackBoard]) -> dict[str, str]:
    disk = boards["healthy"].workdir
    return {"emulate": EMULATE, "ssh_config": str(farm.ssh_config), "workdir": str(disk), "python": board_python(),
            "connect_timeout": "3"}  # fmt: skip


def holder_script(farm: LabgridFarm, selector: str, hold: float, wait: float = 120) -> list[str]:
    code = f"""
        import sys, time
        from mali_hil.harness.farm.client import parse_selector
        from mali_hil.harness.farm.lease import Lease
        with Lease(parse_selector({selector!r}), {farm.address!r}, {wait}) as lease:
            print("locked", lease.place, lease.identity.holder, time.time(), flush=True)
            time.sleep({hold})
        print("released", time.time(), flush=True)
    """
    return [sys.executable, "-c", textwrap.dedent(code)]


def start_holder(farm: LabgridFarm, selector: str, hold: float) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(holder_script(farm, selector, hold), stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    assert line[:1] == ["locked"], line
    return proc, line


# --- the farm run --------------------------------------------------------------------------------------------
def _cut_when_a_worker_runs(board: LoopbackBoard, done: threading.Event, cuts: list[str]) -> None:
    """Drop the board's SSH connections (its sshd's session processes) mid-job: once a worker there has the job's
    checkpoint open (in its files or mappings), else 0.3 s after a worker was first seen: on an idle machine the
    whole job lives about 1.5 s and reads its tiny checkpoint between two looks, so waiting for that alone never
    cut (20 s, as this first waited, passed only on a loaded machine). ``cuts`` says which happened."""
    assert board._proc is not None
    first_seen = None
    while not done.is_set():
        tree = _children(board._proc.pid)
        workers = [pid for pid in tree if b"mali_hil.harness.worker" in _cmdline(pid)]
        loading = [pid for pid in workers if "/checkpoints/" in _open_files(pid)]
        first_seen = first_seen or (time.monotonic() if workers else None)
        if loading or (first_seen is not None and time.monotonic() - first_seen > 0.3):
            for pid in (pid for pid in tree if _comm(pid) == "sshd"):
                os.kill(pid, signal.SIGKILL)
            cuts.append("mid-job" if loading else "worker running")
            return
        time.sleep(0.02)


def _open_files(pid: int) -> str:
    found = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        found.append(Path(f"/proc/{pid}/maps").read_text())
    except OSError:
        pass
    return "\n".join(found)


def test_farm_run_reports_each_board_and_loses_no_healthy_result(farm: LabgridFarm, boards: dict[str, LoopbackBoard],
                                                                 tmp_path: Path, capsys) -> None:  # fmt: skip
    opts = options(farm, boards)
    # the boards' shared disk gets mali-hil once, before three boards race to install it
    target = SshTarget.parse(boards["healthy"].url(emulate=EMULATE, workdir=opts["workdir"]))
    transport = SshTransport(target)
    transport.connect()
    transport.close()
    done, cuts = threading.Event(), []
    cutter = threading.Thread(target=_cut_when_a_worker_runs, args=(boards["flaky"], done, cuts), daemon=True)
    cutter.start()
    out = tmp_path / "report"
    # the health check is test_an_unhealthy_board_is_marked_then_skipped...'s: here the down board's tests are MISSes
    argv = ["farm", "run", "--coordinator", farm.address, "--match", "role=nightly", "--retries", "1", "--wait", "60",
            "--no-health-check", "-o", str(out), *(f"--device-option={k}={v}" for k, v in opts.items()), "--",
            *SUBSET]  # fmt: skip
    try:
        code = main(argv)
    finally:
        done.set()
        cutter.join(5)
    report = json.loads((out / "summary.json").read_text())
    boards_seen = report["boards"]
    assert sorted(boards_seen) == ["down", "flaky", "healthy"]
    healthy = boards_seen["healthy"]
    assert healthy["status"] == "PASS", healthy
    assert healthy["tests"] and all(t["status"] == "PASS" for t in healthy["tests"].values())
    # the down board: every test a MISS (not a FAIL), retried once, then given up
    down = boards_seen["down"]
    assert down["status"] == "MISS" and len(down["attempts"]) == 2, down
    assert down["tests"] and all(t["status"] == "MISS" for t in down["tests"].values())
    # the cut board: the job was run again over a new connection and completed, or is a MISS after retries
    flaky = boards_seen["flaky"]
    assert cuts, "the connection was never cut: the check proves nothing"
    assert flaky["status"] in ("PASS", "MISS"), flaky
    if flaky["status"] == "MISS":
        assert len(flaky["attempts"]) == 2
    assert code == 3  # a MISS somewhere: the infrastructure, not the code under test
    # per-board JUnit: the healthy board's tests there, passed, with the device as a property
    junit = ET.parse(healthy["attempts"][-1]["junit"]).getroot()
    cases = junit.findall(".//testcase")
    assert len(cases) == len(healthy["tests"]) and not junit.findall(".//failure") + junit.findall(".//error")
    down_junit = ET.parse(down["attempts"][0]["junit"]).getroot()
    assert {p.get("value") for p in down_junit.iter("property") if p.get("name") == "mali_hil.outcome"} == {"MISS"}
    # one lease per attempt: pytest's up-front check of --device reserves nothing (it once leased every board twice)
    assert len(healthy["attempts"][-1]["leases"]) == 1, healthy["attempts"][-1]["leases"]
    markdown = (out / "summary.md").read_text()
    assert "| healthy | **PASS** |" in markdown and "| down | **MISS** |" in markdown
    assert "mali-hil farm run: MISS" in capsys.readouterr().out
    # every lock given back
    assert all(farm.holder(name) is None for name in TAGS)
    # a second night against this one: the down board's tests are still missing, not newly; nothing new fails
    again = dict(report)
    assert diff(report, again) == {"new_failures": [], "fixed": [], "still_failing": [], "newly_missing": []}


def farm_run(farm: LabgridFarm, boards: dict[str, LoopbackBoard], out: Path, match: str, *pytest_args: str,
             wait: float = 60, opts: dict[str, str] | None = None, run_args: tuple[str, ...] = ()
             ) -> tuple[int, dict]:  # fmt: skip
    """``mali-hil farm run`` on the places matching ``match``, no retries; (exit status, summary.json)."""
    device_options = [f"--device-option={k}={v}" for k, v in (opts or options(farm, boards)).items()]
    argv = ["farm", "run", "--coordinator", farm.address, "--match", match, "--retries", "0", "--wait", f"{wait:g}",
            "-o", str(out), *device_options, *run_args, "--", *pytest_args]  # fmt: skip
    code = main(argv)
    return code, json.loads((out / "summary.json").read_text())


def test_a_measured_board_test_runs_on_the_session_s_own_lease_one_worker_at_a_time(
    farm: LabgridFarm, boards: dict[str, LoopbackBoard], tmp_path: Path
) -> None:
    """test_declared_bounds_hold measures jobs on the session's own board: on a leased board that once meant a
    second lease of the same place, which waited for the first (held by the same run) until it gave up. Now the
    measured jobs run on the session's lease, in a fresh worker, never beside the session's."""
    farm.client("set-tags", f"{STREAK_TAG}=1", place="healthy")  # as if last night's run had missed
    done, seen = threading.Event(), []
    watcher = threading.Thread(target=watch_workers, args=(boards["healthy"], done, seen), daemon=True)
    watcher.start()
    try:
        code, report = farm_run(farm, boards, tmp_path / "report", "name=healthy", "-k",
                                "test_declared_bounds_hold or test_f32_edge_cases", "--loader=chunked",
                                wait=30)  # fmt: skip
    finally:
        done.set()
        watcher.join(5)
    healthy = report["boards"]["healthy"]
    assert healthy["status"] == "PASS" and code == 0, healthy
    assert any("test_declared_bounds_hold" in name for name in healthy["tests"]), healthy["tests"]
    assert len(healthy["attempts"][-1]["leases"]) == 1, healthy["attempts"][-1]["leases"]
    assert seen and max(seen) == 1, f"workers on the board at once: {max(seen, default=0)}"
    # its health check before the run passed every check; a run that ran sets the count of missed runs back
    assert healthy["health"]["ok"], healthy["health"]
    assert [c["name"] for c in healthy["health"]["checks"]] == ["reachable and ready", "no leftover processes",
                                                                "tiny job"]  # fmt: skip
    assert STREAK_TAG not in place_of(farm, "healthy").tags
    jobs = [json.loads(line) for line in Path(healthy["attempts"][-1]["junit"]).with_suffix(".results.jsonl")
            .read_text().splitlines()]  # fmt: skip
    measured = [job for job in jobs if "test_declared_bounds_hold" in job["test"]]
    assert any(job["device"].startswith("labgrid:healthy") for job in measured), "no measured job on the lease"


@pytest.mark.slow
def test_the_whole_suite_passes_on_a_healthy_farm_board(farm: LabgridFarm, boards: dict[str, LoopbackBoard],
                                                        tmp_path: Path) -> None:  # fmt: skip
    """The whole property suite (no -k), every loader, on one leased board, as a new user runs it: it passes, on
    one lease. Nightly: it takes minutes (README: the farm's time figure)."""
    code, report = farm_run(farm, boards, tmp_path / "report", "name=healthy", wait=60,
                            opts={**options(farm, boards), "emulate": "mali-g610:3GiB"})  # fmt: skip
    healthy = report["boards"]["healthy"]
    failing = {name: t for name, t in healthy["tests"].items() if t["status"] not in ("PASS", "SKIP")}
    assert healthy["status"] == "PASS" and code == 0, failing or healthy
    assert len(healthy["tests"]) > 100 and len(healthy["attempts"][-1]["leases"]) == 1


# --- board health ---------------------------------------------------------------------------------------------
def place_of(farm: LabgridFarm, name: str) -> Place:
    return next(place for place in LabgridClient(farm.address).places() if place.name == name)


def test_an_unhealthy_board_is_marked_then_skipped_with_its_reason_until_reset(
    farm: LabgridFarm, boards: dict[str, LoopbackBoard], tmp_path: Path, capsys
) -> None:
    """Before its run each board is checked (the healthy board's check: test_a_measured_board_test...): the sick
    one's device is not the GPU its place names, so it is not run, and is marked in labgrid with the reason (a
    person's comment kept). The next run skips it and says why, until `mali-hil farm health --reset` clears it."""
    farm.client("set-comment", "rack 2, slot 4", place="sick")
    code, report = farm_run(farm, boards, tmp_path / "first", "name=sick", *SUBSET)
    sick = report["boards"]["sick"]
    assert sick["status"] == "MISS" and not sick["attempts"] and not sick["tests"], sick
    assert "not a Mali-T860" in sick["health"]["reason"] and "health check failed" in sick["infra"]
    assert [c["name"] for c in sick["health"]["checks"]] == ["reachable and ready"]
    assert code == 3
    marked = place_of(farm, "sick")
    assert marked.tags[HEALTH_TAG] == "unhealthy" and marked.tags["gpu"] == "mali-t860"
    assert marked.comment.startswith("mali-hil: unhealthy since") and "not a Mali-T860" in marked.comment
    assert marked.comment.endswith("|| was: rack 2, slot 4")
    assert farm.holder("sick") is None

    code, report = farm_run(farm, boards, tmp_path / "second", "name=sick", *SUBSET)
    sick = report["boards"]["sick"]
    assert sick["status"] == "SKIP" and not sick["attempts"] and "not a Mali-T860" in sick["skipped"], sick
    assert "health" not in sick, "a marked board is not even checked"
    assert list(report["skipped_boards"]) == ["sick"]
    assert code == 3 and report["status"] == "MISS", "every board skipped: nothing ran, which is not a pass"
    markdown = (tmp_path / "second" / "summary.md").read_text()
    assert "| sick | **SKIP** |" in markdown
    assert "marked unhealthy (clear: mali-hil farm health --reset sick)" in markdown
    capsys.readouterr()

    assert main(["farm", "health", "--coordinator", farm.address]) == 0
    shown = capsys.readouterr().out
    assert "unhealthy  sick: mali-hil: unhealthy since" in shown and "ok         healthy" in shown
    assert main(["farm", "health", "--coordinator", farm.address, "--reset", "sick"]) == 0
    assert "reset      sick" in capsys.readouterr().out
    cleared = place_of(farm, "sick")
    assert HEALTH_TAG not in cleared.tags and cleared.comment == "rack 2, slot 4"


def test_runs_that_keep_ending_in_infrastructure_errors_mark_the_board(farm: LabgridFarm,
                                                                       boards: dict[str, LoopbackBoard],
                                                                       tmp_path: Path) -> None:  # fmt: skip
    """The down board, checked by nobody (--no-health-check): its second run in a row that the infrastructure
    kept from running marks it, with the last run's reason."""
    farm.client("set-tags", f"{STREAK_TAG}=1", place="down")
    try:
        code, report = farm_run(farm, boards, tmp_path / "report", "name=down", *SUBSET,
                                run_args=("--no-health-check", "--unhealthy-after", "2"))  # fmt: skip
        assert code == 3 and report["boards"]["down"]["status"] == "MISS"
        place = place_of(farm, "down")
        assert place.tags[HEALTH_TAG] == "unhealthy" and place.tags[STREAK_TAG] == "2"
        assert "2 runs in a row ended in infrastructure errors" in place.comment
        assert report["boards"]["down"]["marked_unhealthy"] in place.comment
    finally:
        health.reset(LabgridClient(farm.address), place_of(farm, "down"))
    assert {HEALTH_TAG, STREAK_TAG}.isdisjoint(place_of(farm, "down").tags)


def test_a_process_left_by_an_earlier_run_on_the_place_fails_its_health_check(
    farm: LabgridFarm, boards: dict[str, LoopbackBoard]
) -> None:
    """A process on the board that carries the place's mark (as every process a run starts there does) is a
    leftover; one of another place (loopback boards share this machine) is not."""
    env = {**os.environ, PLACE_ENV: "healthy"}
    left = subprocess.Popen(["sleep", "120"], env=env)
    other = subprocess.Popen(["sleep", "120"], env={**os.environ, PLACE_ENV: "spare"})
    try:
        verdict = check_board(place_of(farm, "healthy"), farm.address, options(farm, boards))
    finally:
        for proc in (left, other):
            proc.kill()
            proc.wait()
    assert not verdict.ok and verdict.judged
    assert [c.name for c in verdict.checks if not c.ok] == ["no leftover processes"], verdict
    assert f"pid {left.pid}: sleep 120" in verdict.reason and f"pid {other.pid}" not in verdict.reason
    assert farm.holder("healthy") is None


def test_checking_a_labgrid_device_reserves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from mali_hil.harness.devices.registry import check_device

    # no coordinator listens here: a check that reached for one would fail or wait for the reservation
    monkeypatch.setenv("LG_COORDINATOR", "127.0.0.1:9")
    started = time.monotonic()
    check_device("labgrid:gpu=mali-g610?emulate=mali-g610&wait=600")
    assert time.monotonic() - started < 5
    for bad in ("labgrid:gpu=mali-g610?emulate=no-such-gpu", "labgrid:gpu=mali-g610?wait=-1", "labgrid:=x"):
        with pytest.raises(DeviceSpecError):
            check_device(bad)


def test_the_diff_names_new_fixed_still_failing_and_newly_missing() -> None:
    def night(**tests: str) -> dict:
        return {"boards": {"b": {"tests": {name: {"status": status} for name, status in tests.items()}}}}

    before = night(a="PASS", b="FAIL", c="FAIL", d="PASS", e="MISS", f="ERROR")
    after = night(a="FAIL", b="PASS", c="FAIL", d="MISS", e="MISS", f="ERROR", g="ERROR")
    assert diff(before, after) == {"new_failures": ["b :: a", "b :: g"], "fixed": ["b :: b"],
                                   "still_failing": ["b :: c", "b :: f"], "newly_missing": ["b :: d"]}  # fmt: skip
    assert diff(None, after)["new_failures"] == []


# --- leases and locks -----------------------------------------------------------------------------------------
def test_a_sigkilled_holder_s_lock_is_freed_by_the_janitor_and_a_live_one_never(farm: LabgridFarm) -> None:
    client = LabgridClient(farm.address)
    dead, line = start_holder(farm, "spare", hold=600)
    holder = line[2]
    assert farm.holder("spare") == holder and holder.split("/")[1].startswith("mali-hil.")
    live, live_line = start_holder(farm, "down", hold=600)  # a live run on another place (no SSH needed to lock)
    try:
        dead.send_signal(signal.SIGKILL)
        dead.wait()
        assert farm.holder("spare") == holder  # labgrid keeps a dead client's lock (its issue 1739)
        dry = sweep(client, dry_run=True)
        assert {(v.place, v.action) for v in dry if not v.place.startswith("reservation")} == {
            ("spare", "would free"), ("down", "kept")}  # fmt: skip
        assert [v.action for v in dry if v.place.startswith("reservation")] == ["would cancel"]
        assert farm.holder("spare") == holder
        done = subprocess.run([sys.executable, "-m", "mali_hil.harness.cli", "farm", "janitor", "--coordinator",
                               farm.address], capture_output=True, text=True, timeout=120, cwd=ROOT)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert f"freed      spare: {holder}" in done.stdout and "kept       down" in done.stdout
        assert farm.holder("spare") is None and farm.holder("down") == live_line[2]
        with Lease({"name": "spare"}, farm.address, wait=30) as lease:  # the next run gets the board
            assert farm.holder("spare") == lease.identity.holder
        assert farm.holder("spare") is None
    finally:
        live.send_signal(signal.SIGTERM)
        live.wait(60)
    assert farm.holder("down") is None, "SIGTERM must release the lock on its way out"


def test_a_lock_that_is_not_a_mali_hil_run_s_is_never_touched(farm: LabgridFarm) -> None:
    person = {"LG_USERNAME": "alice", "LG_HOSTNAME": "desk"}
    farm.client("lock", place="spare", env=person)
    try:
        verdicts = sweep(LabgridClient(farm.address))
        assert [(v.place, v.action) for v in verdicts] == [("spare", "not ours")]
        assert farm.holder("spare") == "desk/alice"
    finally:
        farm.client("release", place="spare", env=person)


def test_a_second_run_waits_for_the_busy_board_then_gets_it(farm: LabgridFarm) -> None:
    first, _ = start_holder(farm, "gpu=mali-g610", hold=6)
    try:
        with pytest.raises(ReservationTimeout, match="does not share"):
            Lease({"gpu": "mali-g610"}, farm.address, wait=2).acquire()
        assert "waiting" not in farm.client("reservations")  # the timed-out reservation was cancelled
        second = Lease({"gpu": "mali-g610"}, farm.address, wait=120)
        with second:
            got = time.time()
            assert farm.holder("spare") == second.identity.holder
        released = float(first.stdout.readline().split()[1]) if first.stdout else 0.0
        assert got >= released, "the second run held the board while the first still had it"
        assert first.wait(30) == 0
    finally:
        first.kill()
        first.wait()


def test_a_labgrid_device_reaches_its_board_and_gives_it_back(farm: LabgridFarm,
                                                              boards: dict[str, LoopbackBoard]) -> None:  # fmt: skip
    opts = options(farm, boards)
    query = "&".join(f"{k}={v}" for k, v in opts.items())
    from mali_hil.harness.devices import labgrid

    labgrid.set_coordinator(farm.address)
    try:
        device = make_labgrid(DeviceSpec.parse(f"labgrid:healthy?{query}"))
        try:
            assert farm.holder("healthy") == device.lease.identity.holder  # type: ignore[attr-defined]
            assert device.spec.startswith("labgrid:healthy?") and device.board.emulate is not None
            target = device.transport.target  # type: ignore[attr-defined]
            assert (target.host, target.port) == ("127.0.0.1", boards["healthy"].port)
        finally:
            device.close()
        assert farm.holder("healthy") is None
    finally:
        labgrid.set_coordinator(None)


@pytest.mark.parametrize("spec", ["labgrid:", "labgrid:gpu=", "labgrid:g=x", "labgrid:a b", "labgrid:x?wait=-1"])
def test_a_malformed_labgrid_device_is_refused_before_anything_is_reserved(spec: str) -> None:
    with pytest.raises(DeviceSpecError):
        make_labgrid(DeviceSpec.parse(spec))


def test_an_unreachable_coordinator_is_a_clear_error(capsys) -> None:
    assert main(["farm", "janitor", "--coordinator", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mali-hil: error: labgrid-client") and "127.0.0.1:1" in err
    with pytest.raises(CoordinatorError):
        LabgridClient("127.0.0.1:1").places()


def test_a_cancelled_farm_run_sigterm_releases_its_boards_and_writes_its_summary(
    farm: LabgridFarm, boards: dict[str, LoopbackBoard], tmp_path: Path
) -> None:
    """A CI cancel sends SIGTERM to the job: the controller stops its per-board children (each releases its own
    lease), sweeps, writes a partial summary and exits 130, leaving no lock and no child behind."""
    out = tmp_path / "report"
    opts = options(farm, boards)
    device_options = [f"--device-option={k}={v}" for k, v in opts.items()]
    argv = [sys.executable, "-m", "mali_hil.harness.cli", "farm", "run", "--coordinator", farm.address, "--match",
            "name=healthy", "-o", str(out), *device_options, "--", *SUBSET]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while farm.holder("healthy") is None:
            assert proc.poll() is None and time.monotonic() < deadline, "the run never locked its board"
            time.sleep(0.2)
        children = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 130, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert farm.holder("healthy") is None
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists() and _comm(pid) != "sshd"]
    report = json.loads((out / "summary.json").read_text())
    assert report["interrupted"] is True and report["boards"]["healthy"]["status"] != "PASS"
