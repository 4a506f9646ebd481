"""The progress display of a cluster run (rich): the checkpoint being written, a bar per node, one overall.

rich draws live bars only on a terminal; in CI (``CI`` set) or when output is piped it draws nothing, so logs get
the final table only. rich was chosen over tqdm for its several live bars in one display without interleaving
and its tables, which the cluster's summary uses too.
"""

from __future__ import annotations

import os
from types import TracebackType
from typing import Any


def quiet() -> bool:
    import sys

    return bool(os.environ.get("CI")) or not sys.stderr.isatty()


class ClusterProgress:
    def __init__(self, enabled: bool | None = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

        self.enabled = not quiet() if enabled is None else enabled
        self.console = Console(stderr=True)
        self._progress = Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=not self.enabled,
            transient=False,
        )
        self._bytes = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TimeElapsedColumn(),
            console=self.console,
            disable=not self.enabled,
        )
        self._nodes: dict[str, Any] = {}
        self._overall: Any = None

    # --- the checkpoint ------------------------------------------------------------------------------------
    def writing(self, total: int) -> None:
        self._bytes.start()
        self._write_task = self._bytes.add_task("writing checkpoint", total=total)

    def wrote(self, n: int) -> None:
        self._bytes.advance(self._write_task, n)

    def written(self) -> None:
        self._bytes.stop()

    # --- the nodes -----------------------------------------------------------------------------------------
    def __enter__(self) -> ClusterProgress:
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._progress.stop()

    def plan(self, per_node: dict[str, int]) -> None:
        total = sum(per_node.values())
        self._overall = self._progress.add_task("all nodes", total=total, note="")
        for node, jobs in per_node.items():
            self._nodes[node] = self._progress.add_task(node, total=jobs, note="waiting")

    def started(self, node: str, what: str) -> None:
        self._progress.update(self._nodes[node], note=f"loading: {what}")

    def finished(self, node: str, what: str, verdict: str) -> None:
        self._progress.update(self._nodes[node], advance=1, note=f"{what}: {verdict}")
        self._progress.advance(self._overall)
