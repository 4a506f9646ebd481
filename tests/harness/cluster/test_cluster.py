"""exo's partitioning, the keep rules, Hugging Face configs and the checkpoint cache: the parts of cluster that
need no board."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mali_hil.harness.checkpoints import MODELS, ModelError, get_model, make_checkpoint
from mali_hil.harness.checkpoints.models import EMBED, LM_HEAD, NORM
from mali_hil.harness.cluster.model_source import config_from_dict, resolve_model
from mali_hil.harness.cluster.model_store import cached_checkpoint
from mali_hil.harness.cluster.partition import equal_nodes, ring_partition
from mali_hil.harness.loaders import LoadOptions, select_keys

# Llama-3-8B's published config.json, the fields that shape the checkpoint
LLAMA_3_8B = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
    "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32, "vocab_size": 128256,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}  # fmt: skip


def test_exo_gives_node_0_of_14_layers_0_to_1() -> None:
    # exo's own figure for Llama-3-8B on 14 equal boards (an even split would give node 0 layers 0-2)
    shards = equal_nodes(14, 3 << 30, 32)
    assert [(s.first_layer, s.last_layer) for s in shards[:3]] == [(0, 1), (2, 3), (4, 5)]
    assert shards[0].node == "node-00" and shards[-1].last_layer == 31
    assert sum(s.layers for s in shards) == 32


@given(st.lists(st.integers(1, 64), min_size=1, max_size=20), st.integers(1, 80))
def test_ring_partition_covers_every_layer_once(memories: list[int], n_layers: int) -> None:
    shards = ring_partition([(f"n{i}", m << 30) for i, m in enumerate(memories)], n_layers)
    layers = [layer for s in shards for layer in range(s.first_layer, s.last_layer + 1)]
    assert layers == list(range(n_layers))


def test_more_memory_gets_more_layers() -> None:
    shards = ring_partition([("small", 2 << 30), ("big", 6 << 30)], 32)
    assert [(s.node, s.first_layer, s.last_layer) for s in shards] == [("big", 0, 23), ("small", 24, 31)]


def test_keep_rules_decide_who_loads_embedding_norm_and_head(tmp_path: Path) -> None:
    checkpoint = make_checkpoint("tiny", tmp_path / "t.safetensors", layers=3)
    nonlayer = {EMBED, NORM, LM_HEAD}
    for shard in ((0, 0), (1, 1), (2, 2)):
        exo = set(select_keys(checkpoint, LoadOptions(shard=shard, keep="exo-2024")))
        fixed = set(select_keys(checkpoint, LoadOptions(shard=shard)))
        assert nonlayer <= exo  # 2be4465 filtered layers only
        assert fixed & nonlayer == {(0, 0): {EMBED}, (1, 1): set(), (2, 2): {NORM, LM_HEAD}}[shard]
        assert exo - nonlayer == fixed - nonlayer  # the layers are the same under both rules


def test_a_hugging_face_config_maps_to_the_model_it_describes(tmp_path: Path) -> None:
    path = tmp_path / "Meta-Llama-3-8B" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(LLAMA_3_8B))
    source = resolve_model(str(path.parent))
    built_in = get_model("llama-3-8b")
    assert source.dtype == "BF16"
    assert source.config.specs() == built_in.specs()  # every tensor name and shape


def test_tied_qwen_and_mistral_head_dim() -> None:
    qwen = config_from_dict({**LLAMA_3_8B, "architectures": ["Qwen2ForCausalLM"], "tie_word_embeddings": True})
    assert LM_HEAD not in {s.name for s in qwen.specs()}
    mistral = config_from_dict({**LLAMA_3_8B, "architectures": ["MistralForCausalLM"], "head_dim": 64})
    shapes = {s.name: s.shape for s in mistral.specs()}
    assert shapes["model.layers.0.self_attn.q_proj.weight"] == (32 * 64, 4096)  # q_proj follows head_dim
    old = {k: v for k, v in LLAMA_3_8B.items() if k != "num_key_value_heads"}
    assert config_from_dict(old).kv_heads == 32  # no GQA field: one KV head per head


@pytest.mark.parametrize("missing", ["hidden_size", "num_hidden_layers", "vocab_size"])
def test_an_unmappable_config_names_the_missing_field(missing: str) -> None:
    with pytest.raises(ModelError, match=repr(missing)):
        config_from_dict({k: v for k, v in LLAMA_3_8B.items() if k != missing})


def test_a_non_llama_architecture_is_refused_by_name() -> None:
    with pytest.raises(ModelError, match="GPT2LMHeadModel"):
        config_from_dict({**LLAMA_3_8B, "architectures": ["GPT2LMHeadModel"]})


def test_the_cache_finds_a_checkpoint_by_content(tmp_path: Path) -> None:
    written: list[int] = []
    first, cached = cached_checkpoint(MODELS["tiny"], fill="constant", root=tmp_path, progress=written.append)
    assert not cached and sum(written) == first.total_bytes == MODELS["tiny"].nbytes()
    assert first.index is not None and len(first.files) >= 2  # sharded, with an index, as published
    again, cached = cached_checkpoint(MODELS["tiny"], fill="constant", root=tmp_path)
    assert cached and again.index == first.index
    other, cached = cached_checkpoint(MODELS["tiny"], fill="normal", root=tmp_path)  # another fill: other bytes
    assert not cached and other.index != first.index
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]
