"""What each node of a cluster loads, and the verdict and peak-driving tensor of what it measured.

The plan is read off the checkpoint through the loaders' own selection (``select_keys`` with the keep rule), so
the tensors a node is charged with are exactly those its loader loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mali_hil.harness.checkpoints import Checkpoint
from mali_hil.harness.cluster.partition import NodeShard
from mali_hil.harness.loaders.base import LoadOptions, TensorPlan, plan_load
from mali_hil.harness.records.results import LoadResult, Status

VERDICTS = {Status.OK: "fits", Status.DEVICE_OOM: "device-oom", Status.OOM_KILLED: "oom-killed"}
_NEEDED = re.compile(r"needed (\d+) bytes")


@dataclass(frozen=True)
class NodePlan:
    shard: NodeShard
    keep: str
    tensors: tuple[TensorPlan, ...]

    @property
    def source_bytes(self) -> int:
        return sum(t.source_bytes for t in self.tensors)

    @property
    def final_bytes(self) -> int:
        return sum(t.final_bytes for t in self.tensors)

    @property
    def largest(self) -> TensorPlan | None:
        return max(self.tensors, key=lambda t: t.source_bytes, default=None)

    def to_dict(self) -> dict[str, Any]:
        s = self.shard
        return {
            "index": s.index,
            "node": s.node,
            "layers": [s.first_layer, s.last_layer],
            "slice": [s.start, s.end],
            "keep": self.keep,
            "tensors": len(self.tensors),
            "source_bytes": self.source_bytes,
            "final_bytes": self.final_bytes,
        }


def plan_node(checkpoint: Checkpoint, shard: NodeShard, keep: str, n_layers: int, chunk_bytes: int) -> NodePlan:
    options = LoadOptions(
        shard=(shard.first_layer, shard.last_layer), n_layers=n_layers, keep=keep, chunk_bytes=chunk_bytes
    )
    return NodePlan(shard, keep, plan_load(checkpoint, options))


def verdict(result: LoadResult) -> str:
    """fits / device-oom / oom-killed; anything else (error, timeout, infra-error) keeps its status name."""
    return VERDICTS.get(result.status, result.status.value)


def peak_tensor(plan: NodePlan, result: LoadResult) -> dict[str, Any]:
    """Which tensor drives the node's peak, and how we know.

    Measured only for a device-oom whose refused allocation (from the layer's counters) is exactly one tensor's
    size as read or as converted: that tensor was in flight when the cap was hit. Otherwise the loaders give no
    per-tensor timeline, so it is *inferred*: the node's largest tensor, which every variant holds whole (as
    read, as converted, or both) at some moment, and which is the only term of the bounds that varies by node."""
    if result.status is Status.DEVICE_OOM and result.error_message:
        match = _NEEDED.search(result.error_message)
        refused = int(match.group(1)) if match else None
        for tensor in plan.tensors:
            if refused in (tensor.source_bytes, tensor.final_bytes, 4 * tensor.numel):  # as read, converted, widened
                return {
                    "name": tensor.name,
                    "bytes": tensor.source_bytes,
                    "basis": "measured",
                    "why": f"the refused allocation ({refused} bytes) is this tensor's size",
                }
    largest = plan.largest
    if largest is None:
        return {"name": None, "bytes": 0, "basis": "inferred", "why": "the node loads no tensor"}
    return {
        "name": largest.name,
        "bytes": largest.source_bytes,
        "basis": "inferred",
        "why": "the node's largest tensor (no per-tensor timeline from the loader)",
    }
