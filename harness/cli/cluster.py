"""`mali-hil cluster`: exo's N-node cluster of emulated boards loading a full model, node by node, measured."""

from __future__ import annotations

import argparse
from typing import Any

from mali_hil.harness.cli.args import seconds, size, whole_number
from mali_hil.harness.devices.registry import DEFAULT_DEVICE

DEFAULT_LOADERS = ("naive", "chunked")
# exo rings are a handful of devices; each node is a board process and a row of the results (400 digits of nodes
# grew a list to 2 GB before anything was refused)
MAX_NODES = 1024


def register(sub: argparse._SubParsersAction) -> None:
    from mali_hil.harness.loaders.base import KEEP_RULES

    parser = sub.add_parser("cluster", help="split a model over N emulated boards as exo does and load every node")
    parser.add_argument(
        "--model", default="llama-3-8b", help="built-in model name or a Hugging Face config.json (default llama-3-8b)"
    )
    parser.add_argument("--nodes", type=whole_number(1, MAX_NODES), default=14,
                        help=f"equal boards in the ring, at most {MAX_NODES} (default 14)")  # fmt: skip
    parser.add_argument("--device", default=DEFAULT_DEVICE, help=f"each node's board (default {DEFAULT_DEVICE})")
    parser.add_argument(
        "--loader", action="append", default=[], help=f"repeatable (default: {', '.join(DEFAULT_LOADERS)})"
    )
    parser.add_argument(
        "--keep",
        action="append",
        choices=KEEP_RULES,
        default=[],
        help="who loads embedding, norm and head: exo-2024 (every node) or first-last; repeatable (default: both)",
    )
    parser.add_argument("--fill", default="normal", help="checkpoint values: normal (default) or constant")
    parser.add_argument("--parallel", type=whole_number(1, MAX_NODES), default=None,
                        help="boards at once (default: as RAM and cores allow)")  # fmt: skip
    parser.add_argument("--chunk", type=size, default="64MiB", help="chunk size for chunked/mmap loaders (64MiB)")
    parser.add_argument("--timeout", type=seconds, default=600.0, help="seconds per node's load (600)")
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="where made checkpoints are kept (default ~/.cache/mali-hil/cluster-checkpoints)",
    )
    parser.add_argument("--results", default=None, help="write the results document (JSON) here")
    parser.set_defaults(func=_cluster)


def _cluster(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mali_hil.harness.cluster import resolve_model, run_cluster
    from mali_hil.harness.cluster.bars import ClusterProgress
    from mali_hil.harness.records.results_file import check_writable
    from mali_hil.harness.reports.environment import write_document

    if args.results:
        check_writable(args.results, "--results")  # before an hour of loads, not after it
    model = resolve_model(args.model)
    progress = ClusterProgress()
    doc = run_cluster(
        model,
        nodes=args.nodes,
        device=args.device,
        loaders=args.loader or list(DEFAULT_LOADERS),
        keeps=args.keep or ["exo-2024", "first-last"],
        fill=args.fill,
        parallel=args.parallel,
        chunk_bytes=args.chunk,
        timeout_s=args.timeout,
        progress=progress,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        on_record=(lambda partial: write_document(args.results, partial)) if args.results else None,
    )
    if args.results:
        write_document(args.results, doc)
    print_summary(doc)
    return 0


def print_summary(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from mali_hil.harness.reports.tables import node_cells
    from mali_hil.harness.reports.tables import size as sz

    console = Console(width=160 if not Console().is_terminal else None)
    dev = doc["device"]
    console.print(
        f"{doc['model']['name']} over {doc['nodes']} x {dev['spec']} (device {sz(dev['cap_bytes'])}, "
        f"RAM {sz(dev['ram_budget_bytes'])}); checkpoint {sz(doc['checkpoint']['total_bytes'])} in "
        f"{doc['checkpoint']['files']} files{' (cached)' if doc['checkpoint']['cached'] else ''}; "
        f"{doc['wall_s']:.0f} s"
    )
    if doc["nodes_without_layers"]:
        console.print(f"{doc['nodes_without_layers']} node(s) hold no whole layer in exo's partition and load nothing")
    for keep in doc["keeps"]:
        for loader in doc["loaders"]:
            rows = [r for r in doc["results"] if r["keep"] == keep and r["loader"] == loader]
            fits = sum(r["verdict"] == "fits" for r in rows)
            table = Table(title=f"{loader}, keep {keep}: {fits} of {len(rows)} nodes fit", title_justify="left")
            for column in ("node", "layers", "bytes (fp16)", "device peak", "unified peak", "verdict", "peak tensor"):
                table.add_column(column)
            for r in rows:
                table.add_row(*node_cells(r))
            console.print(table)
