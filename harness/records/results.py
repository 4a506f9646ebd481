"""The result record of one load job: the unit that tests, reports and the CLI all use.

Statuses follow the board-farm convention of keeping *what happened to the job* apart from test pass/fail:
``device-oom`` and ``oom-killed`` are results a test may expect; ``infra-error`` means the harness itself
could not run the job (a dead worker, a missing backend) and says nothing about the loader.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mali_hil.emulator.backend import Fp16Fidelity
from mali_hil.runtime.ram import STALL_GAP, Enforcement
from mali_hil.runtime.verdict import OomEvidence, Status

__all__ = ["LoadResult", "OomEvidence", "Status", "TensorDigest"]  # Status: decided by mali_hil.runtime.verdict


@dataclass(frozen=True)
class TensorDigest:
    """What a loaded tensor looks like on the device, compact enough to compare across runs and devices."""

    dtype: str  # numpy's name ("float16", "int32"), whatever framework loaded it
    shape: tuple[int, ...]
    sha256: str  # of the tensor's bytes with every NaN made the canonical quiet NaN of its sign
    nbytes: int


@dataclass(frozen=True)
class LoadResult:
    status: Status
    loader: str
    device: str
    checkpoint: str
    shard: tuple[int, int] | None = None
    error_type: str | None = None
    error_message: str | None = None
    elapsed_s: float = 0.0
    bytes_loaded: int = 0  # bytes of the tensors as they ended on the device
    tensors: int = 0
    device_live_before: int | None = None  # live device bytes when the job started (the worker's baseline)
    device_peak_bytes: int | None = None  # from the layer's counters (None where no layer sees the device)
    device_live_after: int | None = None  # live device bytes after the loader returned (its results included)
    device_cap_bytes: int | None = None
    device_failed_allocations: int | None = None
    # bytes of buffers created past the cap on a profile whose driver fails only at enqueue (enqueue-error): the
    # job may end ok without touching them, as on the real board, but it asked for more than the device has
    device_overcommitted_bytes: int | None = None
    peak_anon_bytes: int | None = None  # RssAnon: what competes with device buffers for the board's RAM
    peak_file_bytes: int | None = None  # RssFile: mmap'd checkpoint pages, reclaimable
    peak_unified_bytes: int | None = None  # anon + shmem, the figure the RAM budget is enforced on
    ram_baseline_bytes: int | None = None  # unified bytes when the job started (interpreter, tinygrad, PoCL)
    # the worker's own unified bytes beside the job's process (a warm parent it was forked from): the board holds
    # both, and the job's process may copy up to all of the worker's pages it shares (see board_baseline_bytes)
    ram_worker_bytes: int | None = None
    ram_budget_bytes: int | None = None
    lru_cache: bool = True  # whether tinygrad's LRU buffer cache was on (it counts against device memory too)
    fp16: Fp16Fidelity = Fp16Fidelity.UNKNOWN
    backend: str = ""  # the OpenCL backend underneath, e.g. "OpenCL 3.0 PoCL 3.1"
    enforcement: Enforcement | None = None  # what kept the job within the board's RAM (None: not known)
    enforcement_gap_s: float | None = None  # the watchdog's longest blind spot between two samples, in seconds
    oom_evidence: OomEvidence | None = None  # for oom-killed: what showed it (enforcer, layer, kernel)
    digests: dict[str, TensorDigest] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)  # base64 of each tensor's bytes, when the job asked
    # what the job left open in its worker, by kind (descriptors, mappings of the checkpoint; threads): see
    # mali_hil.harness.worker.leaks; empty when it left nothing, or where the worker cannot tell
    leaked: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # records also come back from JSON (from_dict) and from users' code: one place turns text into the enums
        object.__setattr__(self, "status", Status(self.status))
        object.__setattr__(self, "fp16", Fp16Fidelity(self.fp16 or Fp16Fidelity.UNKNOWN))
        if self.enforcement is not None:
            object.__setattr__(self, "enforcement", Enforcement(self.enforcement))
        if self.oom_evidence is not None:
            object.__setattr__(self, "oom_evidence", OomEvidence(self.oom_evidence))

    @property
    def enforcement_stalled(self) -> bool:
        """The watchdog was not scheduled for longer than STALL_GAP: the budget went unenforced meanwhile."""
        return self.enforcement is Enforcement.WATCHDOG and (self.enforcement_gap_s or 0.0) > STALL_GAP

    def describe_enforcement(self) -> str:
        """How the RAM budget was enforced, for people."""
        if self.enforcement is None:
            return "enforcement unknown"
        stalled = f" (stalled up to {self.enforcement_gap_s:.2f} s)" if self.enforcement_stalled else ""
        return f"{self.enforcement.value}{stalled}"

    def array(self, name: str) -> Any:
        """A returned tensor as a numpy array (needs a job with ``values=True``)."""
        import base64

        import numpy as np

        digest = self.digests[name]
        raw = base64.b64decode(self.values[name])
        return np.frombuffer(raw, dtype=digest.dtype).reshape(digest.shape)

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @property
    def ram_growth_bytes(self) -> int | None:
        """What the job itself added to the board's RAM at its peak: the figure a loader's RAM bound predicts."""
        if self.peak_unified_bytes is None or self.ram_baseline_bytes is None:
            return None
        return self.peak_unified_bytes - self.ram_baseline_bytes

    @property
    def board_baseline_bytes(self) -> int | None:
        """What the board may hold besides the load, at most: the job's process at its start, and the worker beside
        it, whose pages the job's process shares at first and may copy, up to all of them, as its Python runs (a
        loader that runs much Python copies nearly all: measured, the RAM enforcer's figure of the worker's tree
        then equals ``peak_unified_bytes + ram_worker_bytes``). What a fit is predicted from."""
        if self.ram_baseline_bytes is None:
            return None
        return self.ram_baseline_bytes + (self.ram_worker_bytes or 0)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        data["fp16"] = self.fp16.value
        data["enforcement"] = None if self.enforcement is None else self.enforcement.value
        data["oom_evidence"] = None if self.oom_evidence is None else self.oom_evidence.value
        data["shard"] = list(self.shard) if self.shard else None
        data["digests"] = {k: {**asdict(v), "shape": list(v.shape)} for k, v in self.digests.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadResult:
        data = dict(data)
        data["shard"] = tuple(data["shard"]) if data.get("shard") else None
        data["digests"] = {
            k: TensorDigest(v["dtype"], tuple(v["shape"]), v["sha256"], v["nbytes"])
            for k, v in (data.get("digests") or {}).items()
        }
        return cls(**data)
