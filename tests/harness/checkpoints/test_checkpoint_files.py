"""The files a checkpoint is made of, as the SSH and Docker transports send them: the one reader of an index's
shard list (checkpoints/index.py), which refuses nothing (the validator on the loading side does)."""

from __future__ import annotations

import json
from pathlib import Path

from mali_hil.harness.checkpoints.index import checkpoint_files


def test_an_index_comes_with_the_shards_it_names_that_exist_beside_it(tmp_path: Path) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    index = tmp_path / "model.safetensors.index.json"
    weight_map = {"t1": "b.safetensors", "t2": "a.safetensors", "t3": "b.safetensors", "t4": "gone.safetensors"}
    index.write_text(json.dumps({"metadata": {"total_size": 2}, "weight_map": weight_map}), encoding="utf-8")
    assert checkpoint_files(index) == [index, a, b]
    assert checkpoint_files(a) == [a]
    assert checkpoint_files(tmp_path / "absent.safetensors") == []


def test_a_bad_index_goes_alone_for_the_loading_side_to_refuse(tmp_path: Path) -> None:
    (tmp_path / "outside.safetensors").write_bytes(b"x")
    index = tmp_path / "sub" / "model.safetensors.index.json"
    index.parent.mkdir()
    for text in ('{"weight_map": {"t": "../outside.safetensors"}}', "not json", '{"weight_map": []}'):
        index.write_text(text, encoding="utf-8")
        assert checkpoint_files(index) == [index]
