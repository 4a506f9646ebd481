"""Point 3 of issue 8 (and 12's last case): a worker's whole process tree ends with the job, at once.

Before: a loader that forked and then crashed was a ``timeout`` after the whole job timeout (its child held the
protocol pipe open), and the child ran on with ppid 1; a SIGKILLed harness left its worker running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from mali_hil.harness.devices import make_device
from mali_hil.harness.records.jobs import LoadJob
from mali_hil.harness.records.results import Status
from tests.faults.fault_loaders import PIDFILE_ENV

LOADERS = "tests.faults.fault_loaders"


def alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as gone: it holds nothing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def gone_soon(pids: list[int], within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_loader_that_forks_then_crashes_is_a_death_not_a_timeout(tiny: Path, pidfile: Path) -> None:
    device = make_device("local")
    device.env[PIDFILE_ENV] = str(pidfile)
    with device:  # one device: after a death it starts a new worker for the next job
        for loader in ("forks_then_crashes", "forks_a_group_then_crashes"):
            started = time.monotonic()
            result = device.run(LoadJob(checkpoint=str(tiny), loader=f"{LOADERS}:{loader}", timeout_s=120))
            took = time.monotonic() - started
            children = [int(line) for line in pidfile.read_text().split()]
            try:
                assert (result.status, result.error_type) == (Status.ERROR, "WorkerDied"), result.error_message
                assert f"exit -{int(signal.SIGABRT)}" in (result.error_message or "")
                assert took < 60, f"{loader}: the death took {took:.0f} s to be seen: the job timeout ended it"
                assert children and gone_soon(children), f"{loader}: the child {children} outlived the job"
            finally:
                for pid in children:
                    if alive(pid):
                        os.kill(pid, signal.SIGKILL)


def test_a_worker_dies_with_a_harness_killed_by_sigkill(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: no stdin EOF helps a worker stuck in a job when its harness is SIGKILLed."""
    harness = textwrap.dedent("""
        import sys, time
        from mali_hil.runtime.supervisor import Supervised
        process = Supervised([sys.executable, "-c", "import time; time.sleep(300)"], env={}, layer_stats=False)
        print(process.pid, flush=True)
        time.sleep(300)
    """)
    proc = subprocess.Popen([sys.executable, "-c", harness], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    worker = int(proc.stdout.readline())
    try:
        assert alive(worker)
        proc.kill()
        proc.wait()
        assert gone_soon([worker]), "the worker outlived its SIGKILLed harness"
    finally:
        if alive(worker):
            os.kill(worker, signal.SIGKILL)


def test_the_suite_dies_with_a_mali_hil_run_killed_by_sigkill() -> None:
    """`mali-hil run` starts its suite as a child pytest; SIGKILLed (say by the OOM killer), it cannot stop it, so
    the kernel must (before: the child pytest and its workers ran on with ppid 1)."""
    from mali_hil.runtime.memory import tree_pids

    root = Path(__file__).resolve().parents[2]
    run = subprocess.Popen([sys.executable, "-m", "mali_hil.harness.cli", "run", "--loader",
                            "tests.harness.loaders.odd_loaders:hangs", "--", "-k", "test_same_job_twice"],
                           cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    children: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not (children := [pid for pid in tree_pids(run.pid, living=True) if pid != run.pid]):
            assert run.poll() is None and time.monotonic() < deadline, "no child pytest started"
            time.sleep(0.1)
        run.kill()
        run.wait()
        assert gone_soon(children, within=10.0), "the child pytest outlived its SIGKILLed `mali-hil run`"
    finally:
        run.kill()
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
