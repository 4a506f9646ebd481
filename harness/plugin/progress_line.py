"""The progress line of ``mali-hil run``: tests done / total, the loaders being tested now, elapsed time.

A pytest plugin that ``mali-hil run`` loads into its own pytest with ``-p mali_hil.harness.plugin.progress_line``
(never an entry point, so nobody else's pytest gets it). It draws with rich, which redraws one transient line in
place and leaves nothing behind when the run ends; tqdm would do as well for a bar, but rich's columns carry the
loader names without string formatting of our own, and its Live display is erased cleanly before pytest's summary.

It works the same with and without pytest-xdist: on xdist's controller the workers' reports arrive through the same
hooks (``pytest_runtest_logstart``/``logfinish``), and the total comes from the workers' collection.

While it draws, pytest's own per-test letters are suppressed (they would be written into the line being redrawn);
every outcome still counts in pytest's summary, and failures are reported there as usual. It draws only on a
terminal: ``--mali-hil-progress=auto`` (the default) is quiet when stdout is not a TTY (CI logs, pipes), ``on``
forces it (for tests), ``off`` turns it off."""

from __future__ import annotations

import os
import sys
from collections.abc import Generator, Sequence
from typing import IO, Any

import pytest

from mali_hil.harness.plugin.parallel import loader_of, session_loaders

CHOICES = ("auto", "on", "off")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("mali-hil").addoption(
        "--mali-hil-progress",
        choices=CHOICES,
        default="auto",
        dest="mali_hil_progress",
        help="progress line of mali-hil run: auto (only on a terminal), on, off",
    )


@pytest.hookimpl(trylast=True)  # after the terminal reporter, whose stream we draw on
def pytest_configure(config: pytest.Config) -> None:
    if getattr(config, "workerinput", None) is not None:
        return  # an xdist worker: only the controller draws
    stream = sys.stdout
    choice = config.getoption("mali_hil_progress")
    if choice == "off" or (choice == "auto" and not _is_terminal(stream)):
        return
    config.pluginmanager.register(ProgressLine(config, stream, force=choice == "on"), "mali-hil-progress-line")


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


class ProgressLine:
    """One redrawn line: ``done/total``, a bar, the loaders running now, elapsed time."""

    def __init__(self, config: pytest.Config, stream: IO[str], force: bool = False) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.config = config
        self.console = Console(file=stream, force_terminal=force or None, highlight=False)
        # refreshed from the hooks, never from a thread: outside a test, so pytest's capture never holds the stream
        self.progress = Progress(
            TextColumn("mali-hil"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self.task = self.progress.add_task("collecting", total=None)
        self.running: dict[str, str | None] = {}  # nodeid -> its loader, for tests started and not finished
        self.done = 0
        self._started = False

    # --- counting ------------------------------------------------------------------------------------------
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.progress.update(self.task, total=len(session.items))

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: Sequence[str]) -> None:
        self.progress.update(self.task, total=len(ids))  # every worker collects the whole suite

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        self.running[nodeid] = loader_of(nodeid, self._loaders())
        self._draw()

    def pytest_runtest_logfinish(self, nodeid: str, location: Any) -> None:
        self.running.pop(nodeid, None)
        self.done += 1
        self._draw()

    @pytest.hookimpl(wrapper=True)
    def pytest_report_teststatus(self, report: pytest.TestReport, config: pytest.Config) -> Generator[None, Any, Any]:
        status = yield
        if isinstance(status, tuple) and len(status) == 3 and status[1]:
            return (status[0], "", status[2])  # no letter: it would land inside the redrawn line
        return status

    @pytest.hookimpl(tryfirst=True)  # before the terminal reporter's summary: erase the line first
    def pytest_sessionfinish(self) -> None:
        if self._started:
            self.progress.stop()
            self._started = False

    def pytest_unconfigure(self) -> None:
        self.pytest_sessionfinish()

    # --- drawing -------------------------------------------------------------------------------------------
    def describe(self) -> str:
        loaders = sorted({loader for loader in self.running.values() if loader})
        others = sum(1 for loader in self.running.values() if not loader)
        now = ", ".join(loaders) + (f" (+{others} other)" if others and loaders else "")
        return f"loader: {now}" if loaders else ("running" if others else "")

    def _loaders(self) -> Sequence[str]:
        return session_loaders(self.config)

    def _draw(self) -> None:
        # once per test start and end: the suite's tests take seconds, so this is never a redraw storm
        if not self._started:
            self.progress.start()
            self._started = True
        self.progress.update(self.task, completed=self.done, description=self.describe())
        self.progress.refresh()
