"""The environment a results file was measured in: what a reader needs to trust (or discount) its figures."""

from __future__ import annotations

import platform
from collections.abc import Iterable
from importlib import metadata
from typing import Any

from mali_hil.harness.records.results import LoadResult


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(results: Iterable[LoadResult] = ()) -> dict[str, Any]:
    """This machine's versions, plus what the boards' workers reported (backend, fp16 fidelity, enforcement)."""
    results = list(results)
    return {
        "mali_hil": _version("mali-hil"),
        "tinygrad": _version("tinygrad"),
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.release()} {platform.machine()}",
        **board_facts(results),
    }


def board_facts(results: Iterable[LoadResult]) -> dict[str, Any]:
    """Backends, fp16 fidelities and enforcements the jobs saw (each distinct value once, in order)."""

    def distinct(values: Iterable[str | None]) -> list[str]:
        return list(dict.fromkeys(v for v in values if v))

    results = list(results)
    enforcement = []
    for kind in distinct(r.enforcement.value for r in results if r.enforcement is not None):
        jobs = [r for r in results if r.enforcement is not None and r.enforcement.value == kind]
        stalled = [r.enforcement_gap_s or 0.0 for r in jobs if r.enforcement_stalled]
        enforcement.append(kind + (f" (stalled in {len(stalled)} of {len(jobs)} jobs, up to {max(stalled):.2f} s)"
                                   if stalled else ""))  # fmt: skip
    return {
        "backend": distinct(r.backend for r in results),
        "fp16": distinct(r.fp16.describe() for r in results),
        "enforcement": enforcement,
    }


def write_document(path: str, doc: dict[str, Any]) -> None:
    """A results document, written whole or not at all (temporary file, then rename)."""
    import contextlib
    import json
    import os
    from pathlib import Path

    from mali_hil.harness.records.results_file import ResultsFileError

    target = Path(path)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        partial.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        os.replace(partial, target)
    except OSError as exc:  # the disk filled, the folder went: one line, not a traceback at the end of a long run
        with contextlib.suppress(OSError):
            partial.unlink()
        raise ResultsFileError(f"cannot write the results document {target}: {exc.strerror or exc}") from None
