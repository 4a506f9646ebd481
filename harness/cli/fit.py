"""`mali-hil fit`: will a checkpoint fit a board, per loader variant? Predicted from the declared bounds."""

from __future__ import annotations

import argparse

from mali_hil.errors import MaliHilError
from mali_hil.harness.cli.args import size
from mali_hil.harness.devices.registry import DEFAULT_DEVICE


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("fit", help="predict, per loader variant, whether a checkpoint fits an emulated board")
    parser.add_argument("checkpoint", help="a .safetensors file or a sharded model.safetensors.index.json")
    parser.add_argument("--device", default=DEFAULT_DEVICE, help=f"an emulated-mali device (default {DEFAULT_DEVICE})")
    parser.add_argument("--loader", action="append", default=[], help="default: every built-in variant")
    parser.add_argument("--shard", default=None, help="inclusive layer range this node loads, e.g. 0-7")
    parser.add_argument("--chunk", type=size, default="64MiB", help="chunk size for chunked/mmap loaders (64MiB)")
    parser.set_defaults(func=_fit)


def _fit(args: argparse.Namespace) -> int:
    from mali_hil.harness.devices import make_device
    from mali_hil.harness.loaders import BUILTIN_NAMES, LoadOptions, get_loader
    from mali_hil.harness.records.jobs import parse_shard
    from mali_hil.harness.sizing.predict import predict_fit
    from mali_hil.harness.sizing.threshold_search import measure_baseline

    device = make_device(args.device)
    cap, budget = device.facts.cap_bytes, device.facts.ram_budget_bytes
    if cap is None or budget is None:
        raise MaliHilError(f"fit predicts for boards whose device memory and RAM budget are known (emulated ones); "
                           f"{device.spec} states no cap or budget")  # fmt: skip
    options = LoadOptions(shard=parse_shard(args.shard) if args.shard else None, chunk_bytes=args.chunk)
    with device:
        baseline = measure_baseline(device)
        print(f"{device.spec}: device memory {cap} bytes, RAM budget {budget} bytes, "
              f"idle worker {baseline} bytes")  # fmt: skip
        for name in args.loader or BUILTIN_NAMES:
            loader = get_loader(name)
            prediction = predict_fit(loader.bounds(args.checkpoint, options), cap=cap, budget=budget,
                                     baseline=baseline)  # fmt: skip
            print(f"  {name:<16} {prediction.describe() if prediction else 'no declared bounds: cannot predict'}")
    return 0
