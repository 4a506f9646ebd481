"""`mali-hil fit`: will a checkpoint fit a board, per loader variant? Predicted from the declared bounds."""

from __future__ import annotations

import argparse

from emulator.errors import MaliHilError
from emulator.profile import parse_size


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("fit", help="predict, per loader variant, whether a checkpoint fits an emulated board")
    parser.add_argument("checkpoint", help="a .safetensors file or a sharded model.safetensors.index.json")
    parser.add_argument("--device", default=None, help="an emulated-mali device (default emulated-mali:mali-g610:3GiB)")
    parser.add_argument("--loader", action="append", default=[], help="default: every built-in variant")
    parser.add_argument("--shard", default=None, help="inclusive layer range this node loads, e.g. 0-7")
    parser.add_argument("--chunk", default="64MiB", help="chunk size for chunked/mmap loaders (default 64MiB)")
    parser.set_defaults(func=_fit)


def _fit(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from safetensors.numpy import save_file

    from harness.devices import DEFAULT_DEVICE, make_device
    from harness.devices.emulated import EmulatedMali
    from harness.fit import predict_fit
    from harness.jobs import LoadJob, parse_shard
    from harness.loaders import LoadOptions, get_loader
    from harness.loaders.registry import BUILTIN_NAMES

    device = make_device(args.device or DEFAULT_DEVICE)
    if not isinstance(device, EmulatedMali):
        raise MaliHilError(f"fit predicts for emulated boards, whose limits are known; {device.spec} is not one")
    options = LoadOptions(shard=parse_shard(args.shard) if args.shard else None, chunk_bytes=parse_size(args.chunk))
    with tempfile.TemporaryDirectory() as tmp, device:
        empty = Path(tmp) / "empty.safetensors"
        save_file({}, str(empty))
        probe = device.run(LoadJob(checkpoint=str(empty), digests=False, timeout_s=120))
        if not probe.ok or probe.ram_baseline_bytes is None:
            raise MaliHilError(f"could not measure the worker's baseline on {device.spec}: {probe.error_message}")
        cap, budget = device.board.profile.global_mem, device.board.ram_budget
        print(f"{device.spec}: device memory {cap} bytes, RAM budget {budget} bytes, "
              f"idle worker {probe.ram_baseline_bytes} bytes")  # fmt: skip
        for name in args.loader or BUILTIN_NAMES:
            loader = get_loader(name)
            prediction = predict_fit(loader.bounds(args.checkpoint, options), cap=cap, budget=budget,
                                     baseline=probe.ram_baseline_bytes)  # fmt: skip
            print(f"  {name:<16} {prediction.describe() if prediction else 'no declared bounds: cannot predict'}")
    return 0
