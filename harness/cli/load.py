"""`mali-hil load`: one load job on a device, in its own worker process, printed as a result record."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from mali_hil.harness.cli.args import seconds, size
from mali_hil.harness.devices.registry import DEFAULT_DEVICE
from mali_hil.sizes import format_size

if TYPE_CHECKING:
    from mali_hil.harness.records.results import LoadResult


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("load", help="load a checkpoint with one loader variant on a device and measure it")
    parser.add_argument("checkpoint", help="a .safetensors file or a sharded model.safetensors.index.json")
    parser.add_argument("--loader", default="chunked", help="built-in name or module:function (default: chunked)")
    parser.add_argument("--device", default=DEFAULT_DEVICE, help=f"e.g. {DEFAULT_DEVICE} (the default), local")
    parser.add_argument("--shard", default=None, help="inclusive layer range this node loads, e.g. 0-7")
    parser.add_argument("--chunk", type=size, default="64MiB", help="chunk size for chunked/mmap loaders (64MiB)")
    parser.add_argument("--no-lru", action="store_true", help="turn tinygrad's LRU buffer cache off (LRU=0)")
    parser.add_argument("--no-digests", action="store_true", help="skip reading the tensors back for digests")
    parser.add_argument("--timeout", type=seconds, default=600.0, help="seconds before the job is killed (600)")
    parser.add_argument("--json", action="store_true", help="print the whole record as JSON")
    parser.set_defaults(func=_load)


def _load(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mali_hil.harness.devices import make_device
    from mali_hil.harness.records.jobs import LoadJob, parse_shard

    job = LoadJob(
        checkpoint=str(Path(args.checkpoint).resolve()),
        loader=args.loader,
        shard=parse_shard(args.shard) if args.shard else None,
        chunk_bytes=args.chunk,
        lru=not args.no_lru,
        digests=not args.no_digests,
        timeout_s=args.timeout,
    )
    with make_device(args.device) as device:
        result = device.run(job)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(summary(result))
    return 0 if result.ok else 1


def summary(result: LoadResult) -> str:
    def size(n: int | None) -> str:
        return "n/a" if n is None else format_size(n)

    lines = [f"{result.status.value}: {result.loader} on {result.device} ({result.checkpoint})"]
    if result.error_type:
        lines.append(f"  {result.error_type}: {result.error_message}")
    lines += [
        f"  loaded       {result.tensors} tensors, {size(result.bytes_loaded)} in {result.elapsed_s:.2f} s",
        f"  device peak  {size(result.device_peak_bytes)} of {size(result.device_cap_bytes)}"
        f" (live after {size(result.device_live_after)}, LRU cache {'on' if result.lru_cache else 'off'})",
        f"  RAM peak     {size(result.peak_unified_bytes)} unified of {size(result.ram_budget_bytes)} budget"
        f" (anon {size(result.peak_anon_bytes)}, file-backed {size(result.peak_file_bytes)},"
        f" {result.describe_enforcement()})",
        f"  {result.fp16.describe()}",
    ]
    return "\n".join(lines)
