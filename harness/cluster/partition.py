"""exo's own partitioning of a model's layers over a ring of nodes, as its tinygrad engine did it in 2024.

exo's ring memory-weighted strategy sorts the nodes by (memory, node id), largest first, and gives each a slice of
[0, 1) proportional to its memory, each slice's end rounded to 5 decimals. A slice becomes layers
``int(start * n) .. int(end * n) - 1``; the last node always runs to the last layer, and a node whose slice holds
no whole layer gets none. With 14 equal nodes and 32 layers the first slice ends at 0.07143, so node 0 gets
``int(2.28576) - 1 = 1``: layers 0-1, not the 0-2 an even split would give.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mali_hil.errors import JobSpecError


@dataclass(frozen=True)
class NodeShard:
    """One node's part: its index in ring order, its name, its slice of [0, 1) and its inclusive layer range."""

    index: int
    node: str
    start: float
    end: float
    first_layer: int
    last_layer: int

    @property
    def layers(self) -> int:
        return self.last_layer - self.first_layer + 1


def ring_partition(memories: Sequence[tuple[str, int]], n_layers: int) -> tuple[NodeShard, ...]:
    """Layer ranges for nodes given as ``(node id, memory bytes)``, by exo's arithmetic (module docstring).

    Nodes whose slice holds no whole layer are left out, as exo leaves them out of the ring's shards."""
    if not memories:
        raise JobSpecError("a cluster needs at least one node")
    if n_layers < 1:
        raise JobSpecError(f"a model needs at least one layer, not {n_layers}")
    if any(memory <= 0 for _, memory in memories):
        raise JobSpecError("every node needs a positive memory size")
    nodes = sorted(memories, key=lambda node: (node[1], node[0]), reverse=True)
    total = sum(memory for _, memory in nodes)
    slices = []
    start = 0.0
    for node, memory in nodes:
        end = round(start + memory / total, 5)
        slices.append((node, start, end))
        start = end
    shards: list[NodeShard] = []
    for i, (node, start, end) in enumerate(slices):
        first, last = int(start * n_layers), int(end * n_layers) - 1
        if i == len(slices) - 1:
            last = n_layers - 1
        if first <= last:
            shards.append(NodeShard(len(shards), node, start, end, first, last))
    if shards and shards[-1].last_layer < n_layers - 1:  # rounding left the tail uncovered: the last node takes it
        tail = shards[-1]
        shards[-1] = NodeShard(tail.index, tail.node, tail.start, tail.end, tail.first_layer, n_layers - 1)
    return tuple(shards)


def equal_nodes(count: int, memory: int, n_layers: int) -> tuple[NodeShard, ...]:
    """``count`` identical boards named ``node-00``..: exo orders equal memories by node id, largest first, so
    the names are given in reverse to keep ``node-00`` first in the ring, holding layer 0."""
    if count < 1:
        raise JobSpecError(f"a cluster needs at least one node, not {count}")
    width = max(2, len(str(count - 1)))
    ids = [f"node-{i:0{width}d}" for i in range(count)]
    # Sorting (memory, id) descending puts the largest id first; name them so that order reads 00, 01, ...
    ordered = sorted(ids, reverse=True)
    renamed = {ordered[i]: ids[i] for i in range(count)}
    shards = ring_partition([(node, memory) for node in ids], n_layers)
    return tuple(NodeShard(s.index, renamed[s.node], s.start, s.end, s.first_layer, s.last_layer) for s in shards)
