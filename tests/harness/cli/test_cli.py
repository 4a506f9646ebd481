"""The `mali-hil load`, `fit` and `run` commands, as a user runs them (subprocesses, real devices)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mali_hil.harness.checkpoints import get_model, make_checkpoint, node_keys
from mali_hil.harness.records.results import LoadResult, Status
from mali_hil.harness.values.oracles import expected_digests
from tests.interrupt import interruptible

pytest_plugins = ["pytester"]

SMALL_BOARD = "emulated-mali:mali-g52:512MiB"


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mali_hil.harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """210 MB of fp16 on the device: chunked fits a 512 MiB board, naive (>= 2x in RAM) cannot."""
    path = tmp_path_factory.mktemp("ck") / "llama.safetensors"
    make_checkpoint("llama-3.2-1b", path, scale=0.3, fill="constant")
    return path


def test_load_prints_a_record_that_matches_the_oracle(tmp_path: Path) -> None:
    path = tmp_path / "tiny.safetensors"
    make_checkpoint("tiny", path, fill="special")
    done = cli("load", str(path), "--loader", "mmap", "--device", SMALL_BOARD, "--shard", "0-0", "--json")
    assert done.returncode == 0, done.stderr
    result = LoadResult.from_dict(json.loads(done.stdout))
    assert result.status is Status.OK and result.shard == (0, 0)
    first_node = node_keys(get_model("tiny"), 0, 0)  # layer 0 and the embedding: no norm, no head
    assert result.digests == expected_digests(path, first_node)


def test_the_exo_failure_and_its_fix_on_a_small_board(llama: Path) -> None:
    naive = cli("load", str(llama), "--loader", "naive", "--device", SMALL_BOARD, "--no-digests")
    assert naive.returncode == 1 and naive.stdout.startswith("oom-killed: naive"), naive.stdout + naive.stderr
    chunked = cli("load", str(llama), "--loader", "chunked", "--device", SMALL_BOARD, "--no-digests")
    assert chunked.returncode == 0 and chunked.stdout.startswith("ok: chunked"), chunked.stdout + chunked.stderr


def test_fit_predicts_what_load_then_shows(llama: Path) -> None:
    done = cli("fit", str(llama), "--device", SMALL_BOARD, "--loader", "naive", "--loader", "chunked")
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines()[1:]}
    assert "does not fit" in lines["naive"] and " fits " in lines["chunked"]


def test_bad_arguments_are_one_line_errors(llama: Path) -> None:
    for args in (("load", str(llama), "--shard", "7-2"), ("load", str(llama), "--device", "emulated-mali:nope"),
                 ("fit", str(llama), "--device", "local")):  # fmt: skip
        done = cli(*args)
        assert done.returncode == 2 and done.stderr.startswith("mali-hil: error: "), done.stderr
        assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("load", "x.safetensors", "--timeout", "-1"), "a time must be a positive number of seconds"),
        (("load", "x.safetensors", "--timeout", "nan"), "a time must be a positive number of seconds"),
        (("load", "x.safetensors", "--timeout", "inf"), "a time must be a positive number of seconds"),
        (("load", "x.safetensors", "--chunk", "0"), "a size must be positive"),
        (("emulator", "run", "mali-g610", "--ram-budget", "1e99GiB", "--", "true"), "cannot read memory size"),
        (("emulator", "run", "mali-g610", "--ram-budget", "9" * 400, "--", "true"), "beyond any machine"),
    ],
)
def test_bad_numbers_are_usage_errors_not_tracebacks(args: tuple[str, ...], says: str) -> None:
    done = cli(*args, timeout=60)
    assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [  # issue 25: a traceback in the timer's thread and no timeout; an OverflowError; 7.1 GB and 2 GB of RAM
        (("emulator", "run", "mali-g610", "--timeout", "1e300", "--", "true"), "at most 604800 seconds"),
        (("run", "--workers", "9" * 400), "must be a whole number from 1 to 4"),
        (("checkpoint", "make", "--model", "tiny", "--layers", "9" * 400, "x.safetensors"), "from 1 to 100000"),
        (("cluster", "--nodes", "9" * 400), "must be a whole number from 1 to 1024"),
    ],
)
def test_numbers_past_what_fits_are_refused_before_any_work(
    args: tuple[str, ...], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """In this process (argparse's usage errors are the same here; a subprocess costs seconds each)."""
    from mali_hil.harness.cli import main

    with pytest.raises(SystemExit) as ended:
        main(args)
    assert ended.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.parametrize("command", ["threshold", "cluster", "report"])
def test_an_output_that_cannot_be_written_is_refused_before_the_work(
    llama: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 25: threshold and cluster ran the whole job (minutes to an hour), then died with a traceback."""
    from mali_hil.harness.cli import main

    args = {"threshold": (str(llama), "--results"), "cluster": ("--model", "llama-3.2-1b", "--results"),
            "report": (str(llama), "-o")}[command]  # fmt: skip
    assert main([command, *args, "/missing/dir/x.json"]) == 2
    assert "/missing/dir does not exist" in capsys.readouterr().err


def test_a_report_of_an_empty_file_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mali_hil.harness.cli import main

    (tmp_path / "empty.jsonl").write_text("\n")
    assert main(["report", str(tmp_path / "empty.jsonl"), "-o", str(tmp_path / "r.html")]) == 2  # was 0
    assert "holds no results" in capsys.readouterr().err and not (tmp_path / "r.html").exists()


def test_a_board_size_beyond_any_machine_is_one_line(tmp_path: Path) -> None:
    done = cli("emulator", "run", "mali-g610:" + "9" * 400 + "GiB", "--", "true", timeout=60)
    assert done.returncode == 2 and "beyond any machine" in done.stderr and "Traceback" not in done.stderr


def test_jobs_refuse_impossible_timeouts_and_chunks() -> None:
    from mali_hil.errors import JobSpecError
    from mali_hil.harness.records.jobs import LoadJob

    for fields in ({"timeout_s": 0}, {"timeout_s": float("nan")}, {"timeout_s": float("inf")}, {"chunk_bytes": 0}):
        with pytest.raises(JobSpecError):
            LoadJob(checkpoint="x", **fields)  # type: ignore[arg-type]


def test_a_zero_job_timeout_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user="def test_x(load):\n    pass\n")
    result = pytester.runpytest_subprocess("--job-timeout=0", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*a time must be a positive number of seconds, got '0'*"])


# the group's case with pytest-xdist (its workers get the SIGINT too), the new ones with one process: 17 s, not 35
@pytest.mark.parametrize(("how", "workers"), [("ctrl-c to the group", "2"), ("sigterm to the process", "1"),
                                              ("sigint to the process", "1")])  # fmt: skip
def test_an_interrupted_run_writes_the_report_and_leaves_nothing_running(tmp_path: Path, how: str,
                                                                         workers: str) -> None:  # fmt: skip
    """Ctrl-C reaches the whole foreground group, as from a terminal; a CI system cancels with SIGTERM to the
    process; ``kill -INT`` reaches the process alone. Each must end as Ctrl-C to a plain pytest does: the JUnit
    written, no process of the run left. Before: `mali-hil run` killed its pytest 0.25 s after a Ctrl-C (no
    JUnit, a worker stuck in a job ran on forever); a SIGTERM ended it at once (no JUnit, its pytest and workers
    running on); a SIGINT to it alone let the suite run on until the 60 s grace, then killed it (no JUnit)."""
    import os
    import signal
    import time

    from mali_hil.runtime.memory import tree_pids

    junit = tmp_path / "junit.xml"
    root = Path(__file__).resolve().parents[3]
    argv = [sys.executable, "-m", "mali_hil.harness.cli", "run", "--loader", "tests.harness.loaders.odd_loaders:hangs",
            "--workers", workers, "--junitxml", str(junit), "--", "-k", "test_same_job_twice"]  # fmt: skip
    with interruptible(argv, cwd=root, start_new_session=True, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT) as run:  # fmt: skip

        def device_workers() -> list[int]:
            found = []
            for pid in tree_pids(run.pid, living=True):
                try:
                    if b"mali_hil.harness.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        found.append(pid)
                except OSError:
                    pass
            return found

        deadline = time.monotonic() + 120
        while not device_workers():
            assert run.poll() is None and time.monotonic() < deadline, "no worker started"
            time.sleep(0.2)
        time.sleep(3)  # the hanging job is running now
        started = [pid for pid in tree_pids(run.pid, living=True) if pid != run.pid]
        if how == "ctrl-c to the group":
            os.killpg(run.pid, signal.SIGINT)
        else:
            os.kill(run.pid, signal.SIGTERM if how == "sigterm to the process" else signal.SIGINT)
        output = run.communicate(timeout=50)[0].decode(errors="replace")  # well inside the 60 s grace
    assert junit.is_file() and "<testcase" in junit.read_text(), output[-3000:]
    assert run.returncode == (143 if how == "sigterm to the process" else 130), output[-3000:]
    time.sleep(1)
    # a job's process killed with its worker is reparented to init, which reaps it when it will (this machine's
    # PID 1 takes its time): an exited zombie holds no memory and runs nothing, so only living ones count
    alive = [pid for pid in started if pid in tree_pids(pid, living=True)]
    assert alive == [], f"processes of the run outlived it: {[_described(pid) for pid in alive]}"


def test_a_board_that_takes_one_worker_is_run_by_one_test_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A physical board (ssh:// without emulate=) or a leased one (labgrid:) is held by one session: several test
    processes would each lease it again (and wait for the first) or put workers side by side on its RAM."""
    from mali_hil.errors import MaliHilError
    from mali_hil.harness.cli import main
    from mali_hil.harness.cli.run import choose_workers

    monkeypatch.delenv("MALI_HIL_DEVICE", raising=False)
    assert choose_workers(None, ["ssh://pi@board"]) == 1
    assert choose_workers(None, ["emulated-mali:mali-g52", "labgrid:rock5b-1?emulate=mali-g610"]) == 1
    assert choose_workers(2, ["ssh://pi@board?emulate=mali-g52:2GiB"]) == 2  # an emulated board has its own budget
    assert choose_workers(3, ["emulated-mali:mali-g52"]) == 3
    monkeypatch.setenv("MALI_HIL_DEVICE", "ssh://pi@board")
    assert choose_workers(None, []) == 1
    with pytest.raises(MaliHilError, match="takes one worker at a time"):
        choose_workers(2, ["ssh://pi@board"])
    assert main(["run", "--device=labgrid:rock5b-1", "--workers", "2"]) == 2  # refused before any pytest starts


def _described(pid: int) -> str:
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return f"{pid} (gone)"
    state = " ".join(line for line in status if line.startswith(("State:", "PPid:")))
    return f"{pid} {state} {command[:200]}"
