"""The board farm on a real labgrid coordinator and exporter on 127.0.0.1, with loopback sshd boards running the
emulated Mali: lock acquire/release latency, farm run wall and CPU time for one board against N, and what a
coordinator restart in the middle of a run does.

    python benchmarks/farm.py [--boards 3] [--cycles 10] [--skip-restart]

Prints figures; asserts nothing. Every labgrid request is one ``labgrid-client`` process, so the latencies are
mostly that process's start-up: they grow with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mali_hil.harness.farm.lease import Lease  # noqa: E402
from mali_hil.harness.transports.ssh import SshTransport  # noqa: E402
from mali_hil.harness.transports.ssh_target import SshTarget  # noqa: E402
from tests.labgrid_farm import LabgridFarm  # noqa: E402
from tests.sshd import LoopbackBoard, board_python  # noqa: E402

EMULATE = "mali-g52:512MiB"
SUBSET = ["-k", "test_f32_edge_cases", "--loader=chunked"]


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def farm_run(lab: LabgridFarm, disk: Path, out: Path, match: str) -> tuple[float, float, dict]:
    options = {"emulate": EMULATE, "ssh_config": str(lab.ssh_config), "workdir": str(disk), "python": board_python()}
    argv = [sys.executable, "-m", "mali_hil.harness.cli", "farm", "run", "--coordinator", lab.address, "--match",
            match, "--retries", "0", "-o", str(out), *(f"--device-option={k}={v}" for k, v in options.items()),
            "--", *SUBSET]  # fmt: skip
    wall0, cpu0 = time.monotonic(), cpu()
    subprocess.run(argv, capture_output=True, check=False)
    return time.monotonic() - wall0, cpu() - cpu0, json.loads((out / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--boards", type=int, default=3)
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--skip-restart", action="store_true")
    parser.add_argument("--only-restart", action="store_true", help="measure the coordinator restart only")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mali-hil-farm-bench-"))
    disk = root / "disk"
    boards = {f"b{i}": LoopbackBoard(root / f"b{i}", f"b{i}") for i in range(args.boards)}
    for board in boards.values():
        board.workdir = disk
        board.start()
    lab = LabgridFarm(root / "lab", boards)
    try:
        lab.start({name: {"gpu": "mali-g52", "slot": name} for name in boards})
        first = next(iter(boards.values()))
        transport = SshTransport(SshTarget.parse(first.url(emulate=EMULATE, workdir=str(disk))))
        transport.connect()  # mali-hil installed on the boards' disk once, outside every figure
        transport.close()

        if args.only_restart:
            restart(lab, disk, root, first)
            return
        acquire, release, parts = [], [], []
        for _ in range(args.cycles):
            lease = Lease({"name": "b0"}, lab.address, 60)
            began = time.monotonic()
            lease.acquire()
            acquire.append(time.monotonic() - began)
            lease.release()
            release.append(lease.timings["release_s"])
            parts.append(lease.timings)
        med = statistics.median
        reserve, lock = med(p["reserve_s"] for p in parts), med(p["lock_s"] for p in parts)
        print(f"lease over {args.cycles} cycles: acquire median {med(acquire):.2f} s (min {min(acquire):.2f}, "
              f"max {max(acquire):.2f}; reserve {reserve:.2f}, lock {lock:.2f}), release median {med(release):.2f} s "
              f"(min {min(release):.2f}, max {max(release):.2f})")  # fmt: skip

        one = farm_run(lab, disk, root / "one", "slot=b0")
        every = farm_run(lab, disk, root / "every", "gpu=mali-g52")
        for label, (wall, cpu_s, report) in (("1 board", one), (f"{args.boards} boards", every)):
            statuses = {name: board["status"] for name, board in report["boards"].items()}
            print(f"farm run, {label}: wall {wall:.1f} s, CPU (user+sys of every process) {cpu_s:.1f} s, {statuses}")
        print(
            f"parallel speed-up: {args.boards} boards took {every[0] / one[0]:.2f}x the wall time of one "
            f"(ideal 1.00; serial {args.boards:.2f})"
        )

        if not args.skip_restart:
            restart(lab, disk, root, first)
    finally:
        lab.stop()
        for board in boards.values():
            board.stop()


def restart(lab: LabgridFarm, disk: Path, root: Path, board: LoopbackBoard) -> None:
    """Start a farm run on one board; once its job runs (a worker under the board's sshd), restart the coordinator
    (same places.yaml) and, as a service manager would, the exporter (labgrid's exporter exits when its
    coordinator goes away)."""
    from tests.sshd import _children

    options = {"emulate": EMULATE, "ssh_config": str(lab.ssh_config), "workdir": str(disk), "python": board_python()}
    out = root / "restart"
    argv = [sys.executable, "-m", "mali_hil.harness.cli", "farm", "run", "--coordinator", lab.address, "--match",
            "slot=b0", "--retries", "0", "-o", str(out), *(f"--device-option={k}={v}" for k, v in options.items()),
            "--", *SUBSET]  # fmt: skip
    began = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert board._proc is not None
    while not any(b"mali_hil.harness.worker" in _cmdline(pid) for pid in _children(board._proc.pid)):
        time.sleep(0.05)
    running = time.monotonic()
    holder_before = lab.holder("b0")
    lab.stop()
    lab.start_coordinator()
    lab.start_exporter()
    back = time.monotonic()
    holder_after = lab.holder("b0")
    proc.wait()
    report = json.loads((out / "summary.json").read_text())
    board_report = report["boards"]["b0"]
    leases = [lease for attempt in board_report["attempts"] for lease in attempt["leases"]]
    print(
        f"coordinator restart mid-job: job running at {running - began:.1f} s (holder {holder_before}); "
        f"coordinator and exporter down and back in {back - running:.1f} s; holder after restart: {holder_after}; "
        f"run status {board_report['status']}, lock_lost={board_report.get('lock_lost')}, leases {leases}, "
        f"run wall {time.monotonic() - began:.1f} s"
    )


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


if __name__ == "__main__":
    main()
