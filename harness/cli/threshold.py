"""`mali-hil threshold`: the smallest board RAM each loader variant's load fits on, measured against predicted."""

from __future__ import annotations

import argparse
from typing import Any

from mali_hil.harness.cli.args import seconds, size
from mali_hil.harness.devices.registry import DEFAULT_DEVICE


def register(sub: argparse._SubParsersAction) -> None:
    from mali_hil.harness.loaders.base import KEEP_RULES

    parser = sub.add_parser("threshold", help="bisect the smallest board RAM a load fits on, per loader variant")
    parser.add_argument("checkpoint", help="a .safetensors file or a sharded model.safetensors.index.json")
    parser.add_argument("--loader", action="append", default=[], help="repeatable (default: every built-in variant)")
    parser.add_argument("--device", default=DEFAULT_DEVICE, help=f"the board to resize (default {DEFAULT_DEVICE})")
    parser.add_argument("--shard", default=None, help="inclusive layer range this node loads, e.g. 0-7")
    parser.add_argument("--keep", choices=KEEP_RULES, default="first-last", help="non-layer tensors (first-last)")
    parser.add_argument("--chunk", type=size, default="64MiB", help="chunk size for chunked/mmap loaders (64MiB)")
    parser.add_argument("--timeout", type=seconds, default=600.0, help="seconds per probe (600)")
    parser.add_argument("--results", default=None, help="write the results document (JSON) here")
    parser.set_defaults(func=_threshold)


def _threshold(args: argparse.Namespace) -> int:
    import sys

    from mali_hil.harness.checkpoints import validate_checkpoint
    from mali_hil.harness.loaders import BUILTIN_NAMES
    from mali_hil.harness.records.jobs import parse_shard
    from mali_hil.harness.records.results_file import check_writable
    from mali_hil.harness.reports.environment import write_document
    from mali_hil.harness.sizing.threshold_search import run_threshold

    if args.results:
        check_writable(args.results, "--results")  # before the bisection's probes, not after them
    checkpoint = validate_checkpoint(args.checkpoint)
    path = str((checkpoint.index or checkpoint.files[0]).resolve())
    verbose = sys.stderr.isatty()

    def seen(loader: str, probe: Any) -> None:
        if verbose:
            print(f"  {loader}: {probe.ram >> 20} MiB -> {probe.status}", file=sys.stderr)

    doc = run_threshold(
        path,
        list(args.loader or BUILTIN_NAMES),
        device=args.device,
        shard=parse_shard(args.shard) if args.shard else None,
        keep=args.keep,
        chunk_bytes=args.chunk,
        timeout_s=args.timeout,
        on_probe=seen,
    )
    if args.results:
        write_document(args.results, doc)
    for line in table(doc):
        print(line)
    return 0


def table(doc: dict[str, Any]) -> list[str]:
    from mali_hil.sizes import format_size

    def sz(n: int | None) -> str:
        return "-" if n is None else format_size(n)

    def ratio(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}x"

    step = doc["device"]["step"] >> 20
    lines = [
        f"{doc['checkpoint']} on {doc['device']['profile']} boards (step {step} MiB, idle worker "
        f"{sz(doc['idle_baseline_bytes'])}, shard {doc['shard'] or 'all'}, keep {doc['keep']})",
        f"  {'loader':<16} {'predicted':>11} {'measured':>11} {'meas/pred':>9} {'final':>11} {'meas/final':>10}"
        "  probes",
    ]
    for t in doc["thresholds"]:
        measured = sz(t["measured_ram"]) if t["measured_ram"] is not None else "none"
        lines.append(
            f"  {t['loader']:<16} {sz(t['predicted_ram']):>11} {measured:>11} "
            f"{ratio(t['measured_over_predicted']):>9} {sz(t['final_bytes']):>11} "
            f"{ratio(t['ratio_to_final']):>10}  {len(t['probes'])}"
        )
        if t["stopped"]:
            lines.append(f"    stopped: {t['stopped']}")
    return lines
