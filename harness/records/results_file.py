"""Writing result records to a JSON-lines file so that nothing already written is ever lost or torn.

- The file is opened (created) when the session starts, so a missing or read-only folder stops the run before
  any job, not after every job.
- Each record is one line written by one ``write(2)`` on an ``O_APPEND`` descriptor: other writers appending to
  the same file (pytest-xdist workers, a second run) cannot interleave inside it.
- A write that fails part-way (a full disk takes what fits) is cut back to the last whole line, so the file is
  always a sequence of whole records, and the error names the path.
- Every record carries the run's id (``run``), so records of several runs appended to one file stay apart. The
  id is shared with child processes (xdist workers) through ``MALI_HIL_RUN_ID``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from mali_hil.errors import ResultsFileError

RUN_ID_ENV = "MALI_HIL_RUN_ID"


def run_id() -> str:
    """This run's id: inherited from the parent run (xdist workers), else made now (sortable, unpredictable)."""
    given = os.environ.get(RUN_ID_ENV)
    if given:
        return given
    made = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)
    os.environ[RUN_ID_ENV] = made
    return made


def check_writable(path: str | os.PathLike[str], what: str) -> Path:
    """Refuse, before anything runs, an output path whose folder is missing or not writable (read-only, full of
    inodes, a pseudo file system), or that is a folder or a file we may not write. Tried for real (``os.access``
    says yes to root on a read-only mount); leaves nothing behind."""
    target = Path(path)
    folder = target.parent
    try:
        if target.is_dir():
            raise ResultsFileError(f"{what} {target} is a folder, not a file")
        if not folder.is_dir():
            raise ResultsFileError(f"{what} {target}: its folder {folder} does not exist")
        if target.exists():
            os.close(os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC))
        else:
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".mali-hil-probe-")
            os.close(fd)
            os.unlink(probe)
    except ResultsFileError:
        raise
    except OSError as exc:  # read-only, permission, a name too long, a loop of symlinks: one line, no traceback
        raise ResultsFileError(f"{what} {target} is not writable: {exc.strerror or exc}") from None
    return target


class ResultsFile:
    """An append-only JSON-lines file of result records; opened at once (raises ResultsFileError if it cannot)."""

    def __init__(self, path: str | os.PathLike[str], run: str | None = None) -> None:
        self.path = check_writable(path, "the results file")
        self.run = run or run_id()
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ResultsFileError(f"cannot open the results file {self.path}: {exc.strerror}") from None

    def write(self, record: dict[str, Any]) -> None:
        """Append one whole line; on failure the file keeps only whole lines and ResultsFileError names it."""
        line = (json.dumps({"run": self.run, **record}) + "\n").encode("utf-8")
        # other writers append to the same file (pytest-xdist's processes, runs side by side): the lock keeps one
        # from appending between our look at the size and a cut back to it, which would cut their record too
        with contextlib.suppress(OSError):  # a file system without locks (some NFS) still gets whole records
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            start = os.fstat(self._fd).st_size
            written = os.write(self._fd, line)
            if written != len(line):  # a full disk took what fitted: report it as the disk error it is
                raise OSError(28, os.strerror(28))
        except OSError as exc:
            with contextlib.suppress(OSError):
                if os.fstat(self._fd).st_size > start:
                    os.ftruncate(self._fd, start)  # no torn line: the records already there stay readable
            raise ResultsFileError(
                f"cannot write a result record to {self.path}: {exc.strerror or exc}; the records before it are intact"
            ) from None
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
