"""RAM a converting variant's job grows past its bound's formula: what ``loaders.base.FIRST_KERNELS_RAM`` covers.

Each job runs in a fresh child of the warm worker, so what tinygrad keeps of a process's first kernels is paid in
every job. Prints, per variant and checkpoint, the RAM growth of three jobs on a fresh device and the declared RAM
bound with and without FIRST_KERNELS_RAM.

    python benchmarks/first_kernels_ram.py [--device emulated-mali:mali-g610:3GiB]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from mali_hil.harness.checkpoints import make_checkpoint
from mali_hil.harness.devices import make_device
from mali_hil.harness.loaders import LoadOptions, base, get_loader
from mali_hil.harness.records.jobs import LoadJob

MIB = 1 << 20
CHECKPOINTS = (("tiny", 1.0, 2), ("llama-3.2-1b", 0.05, 2), ("llama-3-8b", 0.1, 4))  # BF16 (model, scale, layers)
VARIANTS = ("mmap", "fix_bf16-host", "fix_bf16-device")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="emulated-mali:mali-g610:3GiB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for model, scale, layers in CHECKPOINTS:
            checkpoint = Path(tmp) / f"{model}-{layers}.safetensors"
            options = {"scale": scale} if scale != 1.0 else {}
            make_checkpoint(model, checkpoint, layers=layers, dtype="BF16", **options)
            inputs = base.bound_inputs(checkpoint, LoadOptions())
            for name in VARIANTS:
                with make_device(args.device) as device:
                    runs = [device.run(LoadJob(checkpoint=str(checkpoint), loader=name, digests=False))
                            for _ in range(3)]  # fmt: skip
                _, ram = get_loader(name).bounds(checkpoint, LoadOptions())
                formula = (ram or 0) - base.first_kernels_ram(inputs)
                growth = [round((r.ram_growth_bytes or 0) / MIB, 1) for r in runs]
                print(f"{model}x{layers} {name:<16} growth {growth} MiB, formula {formula / MIB:.1f} MiB, "
                      f"declared {(ram or 0) / MIB:.1f} MiB ({[r.status.value for r in runs]})")


if __name__ == "__main__":
    main()
