"""The child pytest of ``mali-hil run``: started safely, stopped as Ctrl-C stops a pytest, judged on what it ran.

Started with ``python -P`` and ``PYTHONSAFEPATH=1`` (which the Pythons it starts, pytest-xdist's workers, inherit):
the current folder is not on their ``sys.path``, so a ``pytest.py`` or ``json.py`` in the folder a user runs from
is never imported in place of the real module (before: a ``./pytest.py`` ran instead of the suite, exit 0, and a
``./json.py`` crashed every xdist worker). Users' loaders in the current folder are named with PYTHONPATH or
MALI_HIL_LOADER_PATH, as the device workers (also ``-P``) already required.

Stopped: the child runs in a process group of its own, and this process turns each SIGINT or SIGTERM it gets
into exactly one SIGINT to that group, as a terminal's Ctrl-C to a plain pytest would be. pytest then stops its
workers and writes its reports (JUnit on KeyboardInterrupt). In one group with us, a Ctrl-C from a terminal or a
``kill -INT`` of the group would reach the child once directly and once more forwarded, and a second
KeyboardInterrupt inside pytest's own cleanup loses the JUnit file; a SIGTERM (what CI systems send on cancel) or a
SIGINT to this process alone would not reach it at all. The price: the child has no terminal input (stdin is
/dev/null), so interactive debugging (``--pdb``) needs a plain ``pytest``. A second signal, or a child still
running after the grace, kills the whole group at once; whatever is left of the group when the child ends is
killed too, before the child is reaped (its process group id cannot be reused until then).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

from mali_hil.errors import MaliHilError

#: Exit code of a run that ran no test: pytest's own "no tests collected".
EXIT_NO_TESTS = 5
_POLL = 1.0  # seconds between checks that the child is still alive, when no SIGCHLD woke us


def run_child(argv: Sequence[str], env: Mapping[str, str], grace: float) -> int:
    """Run ``argv`` to its end; 128 + the signal's number when a SIGINT or SIGTERM stopped it (130, 143)."""
    from mali_hil.runtime.supervisor import with_parent_death_signal

    forwarded = {s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN}
    waited = forwarded | {signal.SIGCHLD}
    # blocked, then taken with sigtimedwait: no handler can fire between the fork and the bookkeeping below
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    try:
        # killed outright (SIGKILL, an OOM kill of this process), we cannot stop the child pytest: the kernel does
        child = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, process_group=0,
                                 preexec_fn=with_parent_death_signal(_as_a_plain_process))  # fmt: skip
        received = _wait(child.pid, waited, grace)
        _kill_group(child.pid)
        code = child.wait()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, waited)
    return 128 + received if received else code


def _as_a_plain_process() -> None:
    """In the child: the signals this process blocked unblocked, and SIGINT's default back even if our own caller
    ignored it (a shell's ``cmd &``), so the SIGINT we forward is a KeyboardInterrupt in pytest."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait(pid: int, waited: set[signal.Signals], grace: float) -> int | None:
    """Wait until ``pid`` ended (not reaping it), forwarding the first SIGINT/SIGTERM as a SIGINT to its group;
    return that first signal's number, if any. Returns early on a second signal or past the grace."""
    first: int | None = None
    deadline = float("inf")
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        left = deadline - time.monotonic()
        if left <= 0:
            break  # past the grace: the caller kills the group
        info = signal.sigtimedwait(waited, min(_POLL, left))
        if info is None or info.si_signo == signal.SIGCHLD:
            continue
        if first is not None:
            break  # a second Ctrl-C: stop now
        first = info.si_signo
        os.killpg(pid, signal.SIGINT)
        deadline = time.monotonic() + grace
    return first


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def check_tests_ran(junit: Path, asked: bool) -> int:
    """0 when the JUnit report at ``junit`` exists and shows at least one test that ran (not skipped), else
    EXIT_NO_TESTS with the reason printed: a suite that passed without running anything is not a verdict."""
    import sys

    try:
        root = ET.parse(junit).getroot()
    except FileNotFoundError:
        where = f" at {junit}" if asked else ""
        raise MaliHilError(f"the suite ended with success but wrote no JUnit report{where}: no verdict") from None
    except (OSError, ET.ParseError) as exc:
        raise MaliHilError(f"the suite's JUnit report {junit} cannot be read ({exc}): no verdict") from None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    ran = sum(int(s.get("tests", 0)) - int(s.get("skipped", 0)) for s in suites)
    if ran > 0:
        return 0
    print("mali-hil: error: no test ran (none selected, or every one skipped): a run that tested nothing fails",
          file=sys.stderr)  # fmt: skip
    return EXIT_NO_TESTS
