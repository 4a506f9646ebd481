"""exo's cluster, measured: a model split over N emulated boards by exo's own partitioning, each node's load run
on a board of its own, under either rule for the non-layer tensors (``KEEP_RULES``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mali_hil.harness.cluster.bars import ClusterProgress
from mali_hil.harness.cluster.model_source import ModelSource, resolve_model
from mali_hil.harness.cluster.model_store import cached_checkpoint
from mali_hil.harness.cluster.partition import equal_nodes
from mali_hil.harness.cluster.plan import plan_node, verdict
from mali_hil.harness.cluster.run import NodeJob, default_parallel, node_record, run_nodes
from mali_hil.harness.records.jobs import DEFAULT_CHUNK_BYTES
from mali_hil.harness.records.results import LoadResult

DOCUMENT_KIND = "mali-hil.cluster"

__all__ = ["DOCUMENT_KIND", "ModelSource", "resolve_model", "run_cluster"]


def run_cluster(
    model: ModelSource,
    *,
    nodes: int,
    device: str,
    loaders: Sequence[str],
    keeps: Sequence[str],
    fill: str = "normal",
    parallel: int | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    timeout_s: float = 600.0,
    progress: ClusterProgress | None = None,
    cache_dir: Path | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Make (or find) the checkpoint, run every (keep rule, loader, node) load, and return the results document.

    ``on_record(doc)`` gets the document after every finished job (``complete`` false until the last), so an
    interrupted or crashed run of an hour loses no finished node."""
    from mali_hil.harness.devices import make_device
    from mali_hil.harness.loaders import get_loader
    from mali_hil.harness.reports.environment import environment

    for name in loaders:
        get_loader(name)  # an unknown loader is refused before 16 GB are written
    board = make_device(device)
    facts = board.facts
    progress = progress or ClusterProgress(enabled=False)
    started = time.monotonic()
    memory = facts.ram_budget_bytes or 1  # equal boards: only the ratio matters to exo's partition
    shards = equal_nodes(nodes, memory, model.config.layers)
    checkpoint, cached = cached_checkpoint(
        model.config, dtype=model.dtype, fill=fill, root=cache_dir, progress=progress.wrote, on_make=progress.writing
    )
    if not cached:
        progress.written()
    made_s = time.monotonic() - started
    n_layers = model.config.layers
    plans = {keep: [plan_node(checkpoint, s, keep, n_layers, chunk_bytes) for s in shards] for keep in keeps}
    jobs = [NodeJob(plan, loader) for keep in keeps for loader in loaders for plan in plans[keep]]
    parallel = parallel or default_parallel(facts.ram_budget_bytes)
    path = str(checkpoint.index or checkpoint.files[0])

    doc: dict[str, Any] = {
        "kind": DOCUMENT_KIND,
        "version": 1,
        "complete": False,  # until every job has ended: a partial document still holds every finished job
        "jobs": len(jobs),
        "model": {**asdict(model.config), "dtype": model.dtype, "origin": model.origin},
        "checkpoint": {
            "path": path,
            "files": len(checkpoint.files),
            "total_bytes": checkpoint.total_bytes,
            "cached": cached,
            "fill": fill,
            "made_s": None if cached else made_s,
        },
        "device": {
            "spec": device,
            "profile": facts.profile,
            "cap_bytes": facts.cap_bytes,
            "ram_budget_bytes": facts.ram_budget_bytes,
        },
        "nodes": nodes,
        "nodes_without_layers": nodes - len(shards),  # exo leaves a node whose slice holds no whole layer idle
        "loaders": list(loaders),
        "keeps": list(keeps),
        "parallel": parallel,
        "wall_s": None,
        "environment": environment(),
        "results": [],
    }
    finished: list[LoadResult] = []

    def done(job: NodeJob, result: LoadResult) -> None:
        progress.finished(job.plan.shard.node, _label(job), verdict(result))
        finished.append(result)
        doc["results"].append(node_record(job, result))
        doc["environment"] = environment(finished)
        if on_record is not None:
            on_record(doc)

    with progress:
        progress.plan({s.node: len(keeps) * len(loaders) for s in shards})
        outcomes = run_nodes(
            jobs,
            device,
            lambda job: job.load_job(path, n_layers, chunk_bytes, timeout_s),
            parallel=parallel,
            on_start=lambda job: progress.started(job.plan.shard.node, _label(job)),
            on_done=done,
        )
    doc.update(complete=True, wall_s=time.monotonic() - started)
    doc["results"] = [node_record(job, result) for job, result in outcomes]  # in plan order, not finishing order
    return doc


def _label(job: NodeJob) -> str:
    return f"{job.loader} ({job.plan.keep})"
