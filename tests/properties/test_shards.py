"""Property 6, shards: an exo node that holds layers ``start..end`` loads exactly its tensors, with the right values.

exo issue #128: every node loaded the whole model and the first one ran out of memory; commit 2be4465 made each
node load only its layers, plus the embedding on the first node and the final norm and head on the last (the
embedding again on the last when the model ties its head to it). ``node_keys`` states that rule; the jobs here
check each variant follows it, for split models and for checkpoints split over several files.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mali_hil.harness.checkpoints import get_model, split_layers
from mali_hil.harness.values.oracles import expected_digests

from .checks import check_node
from .conftest import failed

pytestmark = pytest.mark.mali_hil_property("shards")

# model -> scale: tiny unties its head (lm_head.weight); llama-3.2-1b ties it, shrunk to a vocab of 257
MODELS = {"tiny": 1.0, "llama-3.2-1b": 0.002}


@st.composite
def splits(draw: Any) -> tuple[str, int, int, int]:
    """(model, layers, nodes, files): a model of 2-6 layers split over 1..layers nodes, in 1 or 2 files."""
    model = draw(st.sampled_from(sorted(MODELS)))
    layers = draw(st.integers(2, 6))
    nodes = draw(st.integers(1, layers))
    return model, layers, nodes, draw(st.sampled_from([1, 2]))


def _checkpoint(make_checkpoint: Any, model: str, layers: int, files: int = 1) -> Any:
    options: dict[str, Any] = {"layers": layers}
    if MODELS[model] != 1.0:
        options["scale"] = MODELS[model]
    if files > 1:
        options["shards"] = files
    return make_checkpoint(model, **options)


def test_each_node_loads_its_layers(load, loader_name: str, make_checkpoint) -> None:
    """Each node's job returns exactly ``node_keys`` with the oracle's values, and the nodes together cover the
    checkpoint. Catches: a loader that ignores the shard range (every node loads the whole model, as in exo
    #128); off-by-one on an inclusive end; the head forgotten on the last node, or the embedding forgotten there
    when the model is tied; an lm_head loaded on the first node; the right names with another tensor's bytes."""

    @given(split=splits())
    def check(split: tuple[str, int, int, int]) -> None:
        model, layers, nodes, files = split
        checkpoint = _checkpoint(make_checkpoint, model, layers, files)
        config = get_model(model).scaled(MODELS[model], layers=layers)
        covered: set[str] = set()
        for start, end in split_layers(layers, nodes):
            result = load(checkpoint, shard=(start, end), values=True)
            check_node(result, checkpoint, config, start, end)  # emulated-half edge values: numerics' business
            covered |= set(result.digests)
        assert covered == set(expected_digests(checkpoint)), f"{nodes} nodes of {config.name} do not cover the model"

    check()


@pytest.mark.parametrize("shard", [None, (1, 2)], ids=["whole", "layers-1-2"])
def test_sharded_checkpoint_loads_like_one_file(load, loader_name: str, make_checkpoint,
                                                shard: tuple[int, int] | None) -> None:  # fmt: skip
    """The same model written as one file and as two files with a ``model.safetensors.index.json`` loads to the
    same digests. Catches: only the first file of an index read; offsets taken relative to the wrong file's
    buffer; an index's tensors loaded in another order under the wrong names; a layer range cut at a file
    boundary."""
    single = load(_checkpoint(make_checkpoint, "tiny", 4), shard=shard)
    sharded = load(_checkpoint(make_checkpoint, "tiny", 4, files=2), shard=shard)
    assert single.ok, failed(single)
    assert sharded.ok, failed(sharded)
    assert sharded.digests == single.digests
