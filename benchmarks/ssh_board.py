"""What the SSH device costs: job overhead against the local emulated Mali, the first run's bootstrap, a second
run's, and checkpoint transfer against plain scp. The board is a real sshd on 127.0.0.1 (tests/sshd.py) running
the emulated Mali (``emulate=``): network cost is loopback's, so these are the harness's own costs.

    python benchmarks/ssh_board.py [--jobs 200] [--transfer-mib 256] [--emulate mali-g52:2GiB]

Goal: per-job overhead on ssh <= 2x local (warm worker).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mali_hil.harness.checkpoints import make_checkpoint
from mali_hil.harness.devices import Device, make_device
from mali_hil.harness.records.jobs import LoadJob
from mali_hil.harness.records.results import Status
from mali_hil.harness.transports.ssh import SshTransport
from tests.sshd import LoopbackBoard


def overhead_ms(device: Device, job: LoadJob, jobs: int) -> list[float]:
    device.run(job)  # warm-up
    out = []
    for _ in range(jobs):
        began = time.perf_counter()
        result = device.run(job)
        assert result.status is Status.OK, result.error_message
        out.append(1000 * (time.perf_counter() - began - result.elapsed_s))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--transfer-mib", type=int, default=256)
    parser.add_argument("--emulate", default="mali-g52:2GiB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tiny = root / "tiny.safetensors"
        make_checkpoint("tiny", tiny)
        board = LoopbackBoard(root / "sshd").start()
        try:
            url = board.url(emulate=args.emulate)
            began = time.monotonic()
            with make_device(url) as first:
                cold = time.monotonic() - began
                assert isinstance(first.transport, SshTransport) and first.transport.installed
                ssh = overhead_ms(first, LoadJob(checkpoint=str(tiny), digests=False), args.jobs)
            began = time.monotonic()
            with make_device(url) as second:
                warm = time.monotonic() - began
                assert isinstance(second.transport, SshTransport) and not second.transport.installed
                big = root / "big.bin"
                with big.open("wb") as out:
                    for _ in range(args.transfer_mib):
                        out.write(bytes(1 << 20))
                began = time.perf_counter()
                second.transport.place(big)
                placed = time.perf_counter() - began
                began = time.perf_counter()
                subprocess.run(["scp", "-q", *second.transport.ssh_options(), "--", str(big),
                                f"{board.alias}:{board.workdir}/scp-copy.bin"], check=True)  # fmt: skip
                scp = time.perf_counter() - began
            with make_device(f"emulated-mali:{args.emulate}") as local_device:
                local = overhead_ms(local_device, LoadJob(checkpoint=str(tiny), digests=False), args.jobs)
        finally:
            board.stop()
    mib = args.transfer_mib
    print(f"board: loopback sshd, emulate={args.emulate}, {args.jobs} jobs per device on a warm worker")
    print(f"first run (bootstrap: venv, wheel, install, health) until the worker is up: {cold:.1f} s")
    print(f"second run (venv reused) until the worker is up: {warm:.1f} s; saved {cold - warm:.1f} s")
    for name, values in (("local", local), ("ssh", ssh)):
        p95 = statistics.quantiles(values, n=20)[-1]
        print(f"overhead {name:<5} median {statistics.median(values):.1f} ms, p95 {p95:.1f} ms")
    ratio = statistics.median(ssh) / statistics.median(local)
    print(f"ssh / local: {ratio:.2f}x (goal <= 2x: {'met' if ratio <= 2 else 'MISSED'})")
    print(f"checkpoint transfer of {mib} MiB: place() {mib / placed:.0f} MiB/s (hash + sftp + rename), "
          f"plain scp {mib / scp:.0f} MiB/s")  # fmt: skip


if __name__ == "__main__":
    main()
