"""Writing checkpoints, model shapes and seeded values, checked against the reference safetensors library.

Every file here is real and on disk; the ``safetensors`` package (Hugging Face's Rust reader) is the
independent oracle for what a file holds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from mali_hil.harness.checkpoints import (
    MODELS,
    SPECIAL_BF16,
    CheckpointInfo,
    ModelError,
    TensorSpec,
    get_model,
    layer_of,
    make_checkpoint,
    make_fill,
    materialize,
    node_keys,
    plan_shards,
    split_layers,
    validate,
    validate_checkpoint,
    write_safetensors,
    write_sharded,
)
from mali_hil.harness.checkpoints.faults import CheckpointWriteError, FillError
from mali_hil.harness.checkpoints.fill import ConstantFill, NormalFill, SpecialFill
from mali_hil.harness.checkpoints.models import EMBED, LM_HEAD, NORM

REPO = Path(__file__).resolve().parents[3]


def _bits(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array).tobytes()


# --- round trips through the reference reader ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32"])
@pytest.mark.parametrize("fill", ["normal", "constant", "special"])
def test_written_checkpoint_reads_back_bit_exact_in_reference_library(tmp_path: Path, dtype: str, fill: str) -> None:
    out = tmp_path / "tiny.safetensors"
    checkpoint = make_checkpoint("tiny", out, seed=7, dtype=dtype, fill=fill)
    config = get_model("tiny")
    loaded = load_file(out)
    assert set(loaded) == {spec.name for spec in config.specs()} == set(checkpoint.tensors)
    values = make_fill(fill, seed=7)
    for spec in config.specs(dtype):
        expected = materialize(values, spec)
        assert loaded[spec.name].dtype == expected.dtype, spec.name
        assert loaded[spec.name].shape == spec.shape, spec.name
        assert _bits(loaded[spec.name]) == _bits(expected), spec.name
    with safe_open(out, "np") as handle:
        assert handle.metadata()["mali_hil.fill"] == fill
        assert handle.metadata()["mali_hil.seed"] == "7"


@settings(max_examples=12, deadline=None)
@given(aligned=st.booleans(), seed=st.integers(0, 2**16), shards=st.sampled_from([1, 2]),
       model=st.sampled_from(["tiny", "llama-3.2-1b"]))  # fmt: skip
def test_aligned_data_sections_start_where_asked_and_read_back_exact(
    tmp_path_factory: pytest.TempPathFactory, aligned: bool, seed: int, shards: int, model: str
) -> None:
    """Catches: padding that breaks the header for the reference reader, a shard written without the padding,
    padding counted from the header instead of the file (the 8-byte prefix)."""
    out = tmp_path_factory.mktemp("aligned") / ("model.safetensors" if shards == 1 else "model")
    options = {"scale": 0.05, "layers": 2} if model != "tiny" else {}
    checkpoint = make_checkpoint(model, out, seed=seed, dtype="F16", shards=shards, aligned=aligned, **options)
    files = sorted({path for path, _ in checkpoint.tensors.values()})
    assert len(files) == shards
    values = make_fill("normal", seed=seed)
    config = get_model(model).scaled(options.get("scale", 1.0), layers=options.get("layers"))
    specs = {spec.name: spec for spec in config.specs("F16")}
    for path in files:
        prefix = int.from_bytes(Path(path).read_bytes()[:8], "little")
        assert ((8 + prefix) % 16 == 0) == aligned, (path, prefix)
        for name, array in load_file(path).items():  # the reference reader
            assert _bits(array) == _bits(materialize(values, specs[name])), name


def test_tinygrad_safe_load_sees_the_same_tensors_and_bits(tmp_path: Path) -> None:
    # tinygrad's safe_load is what exo's loader calls; on the DISK device it reads without compiling kernels.
    from tinygrad import dtypes
    from tinygrad.nn.state import safe_load

    out = tmp_path / "tiny.safetensors"
    make_checkpoint("tiny", out, seed=11)
    loaded = safe_load(str(out))
    specs = get_model("tiny").specs()
    assert set(loaded) == {spec.name for spec in specs}
    for spec in specs:
        tensor = loaded[spec.name]
        assert tensor.shape == spec.shape and tensor.dtype == dtypes.bfloat16, spec.name
        expected = materialize(NormalFill(seed=11), spec).view(np.uint16)
        assert np.array_equal(tensor.bitcast(dtypes.uint16).numpy(), expected), spec.name


def test_normal_fill_is_small_bf16_values(tmp_path: Path) -> None:
    out = tmp_path / "f32.safetensors"
    make_checkpoint("tiny", out, seed=1, dtype="F32", fill="normal")
    embed = load_file(out)[EMBED]
    assert embed.dtype == np.float32
    # Stored as F32 yet every value is a bf16 value: widening bf16 -> f32 is exact.
    assert np.array_equal(embed.astype(ml_dtypes.bfloat16).astype(np.float32), embed)
    assert abs(float(embed.mean())) < 0.002
    assert 0.018 < float(embed.std()) < 0.022
    assert len(np.unique(embed)) > 100


def test_special_fill_cycles_through_the_listed_bf16_patterns(tmp_path: Path) -> None:
    out = tmp_path / "special.safetensors"
    make_checkpoint("tiny", out, fill="special")
    embed = load_file(out)[EMBED].reshape(-1).view(np.uint16)
    listed = np.array([bits for _, bits in SPECIAL_BF16], dtype=np.uint16)
    period = 2 * len(listed)
    assert np.array_equal(embed[: len(listed)], listed)
    assert np.array_equal(embed[period : period + len(listed)], listed)
    random_run = embed[len(listed) : period]
    assert len(np.unique(random_run)) > len(listed) // 2  # random bits, not a repeated pattern
    values = embed.view(ml_dtypes.bfloat16).astype(np.float32)
    assert np.isnan(values).any() and np.isposinf(values).any() and np.isneginf(values).any()
    assert (embed == 0x8000).any()  # -0 survives the trip


def test_special_list_has_the_boundary_cases_of_bf16_to_fp16() -> None:
    bits = np.array([bits for _, bits in SPECIAL_BF16], dtype=np.uint16)
    with np.errstate(invalid="ignore"):
        as_floats = {float(v) for v in bits.view(ml_dtypes.bfloat16).astype(np.float64)}
    for needed in (2.0**-25, 1.5 * 2.0**-25, 2.0**-24, 2.0**-14, 65280.0, 65536.0, float("inf"), float("-inf")):
        assert needed in as_floats
    assert max(v for v in as_floats if np.isfinite(v)) == float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)
    assert any(0 < abs(v) < 2.0**-126 for v in as_floats)  # a bf16 subnormal
    assert any(2.0**-24 < v < 2.0**-14 for v in as_floats)  # the fp16 subnormal range
    assert sum(np.isnan(v) for v in as_floats) >= 1


@pytest.mark.parametrize("fill", [NormalFill(seed=5), SpecialFill(seed=5), ConstantFill(value=0.25)])
def test_fill_values_do_not_depend_on_chunk_size(fill: object) -> None:
    spec = TensorSpec("model.layers.0.mlp.up_proj.weight", "BF16", (37, 29))
    reference = _bits(materialize(fill, spec))  # type: ignore[arg-type]
    for chunk in (4, 12, 100, 1 << 20):
        rechunked = type(fill)(**{**fill.__dict__, "chunk_elems": chunk})  # type: ignore[attr-defined]
        assert _bits(materialize(rechunked, spec)) == reference, chunk


def test_fill_depends_on_seed_and_name_only() -> None:
    a = TensorSpec("a", "BF16", (64,))
    a_again = TensorSpec("a", "BF16", (64,))
    b = TensorSpec("b", "BF16", (64,))
    assert _bits(materialize(NormalFill(seed=1), a)) == _bits(materialize(NormalFill(seed=1), a_again))
    assert _bits(materialize(NormalFill(seed=1), a)) != _bits(materialize(NormalFill(seed=2), a))
    assert _bits(materialize(NormalFill(seed=1), a)) != _bits(materialize(NormalFill(seed=1), b))
    # A longer tensor of the same name starts with the same values: position-wise determinism.
    longer = TensorSpec("a", "BF16", (128,))
    assert _bits(materialize(NormalFill(seed=1), longer))[:128] == _bits(materialize(NormalFill(seed=1), a))


def test_fill_refuses_unknown_kind_bad_seed_and_unwritable_dtype() -> None:
    with pytest.raises(FillError, match="normal, constant, special"):
        make_fill("gaussian")
    with pytest.raises(FillError, match="seed"):
        make_fill("normal", seed=-1)
    with pytest.raises(FillError, match="I32"):
        NormalFill()(TensorSpec("x", "I32", (2,)))


def test_reference_library_files_pass_our_validator(tmp_path: Path) -> None:
    arrays = {
        "bool": np.array([True, False, True]),
        "u8": np.arange(5, dtype=np.uint8),
        "i8": -np.arange(5, dtype=np.int8),
        "i16": np.arange(6, dtype=np.int16).reshape(2, 3),
        "u16": np.arange(6, dtype=np.uint16),
        "f16": np.linspace(-1, 1, 7).astype(np.float16),
        "bf16": np.linspace(-1, 1, 9).astype(ml_dtypes.bfloat16).reshape(3, 3),
        "i32": np.arange(4, dtype=np.int32),
        "u32": np.arange(4, dtype=np.uint32),
        "f32": np.array([np.nan, np.inf, -np.inf, 1.5], dtype=np.float32),
        "f64": np.arange(3, dtype=np.float64),
        "i64": np.arange(3, dtype=np.int64),
        "u64": np.arange(3, dtype=np.uint64),
        "c64": np.array([1 + 2j], dtype=np.complex64),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "scalar": np.array(3.0, dtype=np.float32),
    }
    out = tmp_path / "ref.safetensors"
    save_file(arrays, out, metadata={"format": "np", "note": "written by the reference library"})
    info = validate(out)
    assert info.metadata == {"format": "np", "note": "written by the reference library"}
    assert set(info.names) == set(arrays)
    raw = out.read_bytes()
    for name, array in arrays.items():
        tensor = info.tensor(name)
        assert tensor.shape == array.shape, name
        assert raw[info.data_start + tensor.start : info.data_start + tensor.end] == _bits(array), name
    assert info.header_size % 8 == 0


def test_our_header_is_space_padded_to_8_and_tensors_are_aligned(tmp_path: Path) -> None:
    specs = [
        TensorSpec("odd_u8", "U8", (3,)),
        TensorSpec("f16", "F16", (5,)),
        TensorSpec("f64", "F64", (2,)),
        TensorSpec("bf16", "BF16", (1,)),
        TensorSpec("f32", "F32", (3,)),
    ]
    out = tmp_path / "mixed.safetensors"
    write_safetensors(out, specs, lambda spec: [bytes(spec.nbytes)], metadata={"k": "v"})
    info = validate(out)
    raw = out.read_bytes()
    header = raw[8 : info.data_start].decode()
    assert info.header_size % 8 == 0
    assert header.rstrip(" ") == header.strip() and json.loads(header)["__metadata__"] == {"k": "v"}
    for tensor in info.tensors:
        width = {"U8": 1, "F16": 2, "BF16": 2, "F32": 4, "F64": 8}[tensor.dtype]
        assert (info.data_start + tensor.start) % width == 0, tensor
    assert set(load_file(out)) == {spec.name for spec in specs}


def test_writer_takes_bytes_like_chunks_and_checks_their_total(tmp_path: Path) -> None:
    spec = TensorSpec("t", "U8", (10,))
    out = tmp_path / "chunks.safetensors"
    chunks = [b"\x01\x02", bytearray(b"\x03"), memoryview(b"\x04\x05"), np.arange(6, 11, dtype=np.uint8)]
    write_safetensors(out, [spec], lambda s: chunks)
    assert load_file(out)["t"].tolist() == list(range(1, 11))

    short = tmp_path / "short.safetensors"
    with pytest.raises(CheckpointWriteError) as caught:
        write_safetensors(short, [spec], lambda s: [b"\x00" * 9])
    assert (caught.value.expected, caught.value.actual, caught.value.tensor) == (10, 9, "t")
    with pytest.raises(CheckpointWriteError):
        write_safetensors(short, [spec], lambda s: [b"\x00" * 6, b"\x00" * 6])
    with pytest.raises(CheckpointWriteError, match="float32"):
        write_safetensors(short, [TensorSpec("t", "F16", (2,))], lambda s: [np.zeros(1, np.float32)])
    assert list(tmp_path.iterdir()) == [out]  # failed writes leave neither the file nor a partial one


@pytest.mark.parametrize(
    "specs",
    [
        [TensorSpec("a", "F32", (2,)), TensorSpec("a", "F32", (2,))],
        [TensorSpec("__metadata__", "F32", (2,))],
        [TensorSpec("a", "Q8", (2,))],
        [TensorSpec("a", "F32", (-1,))],
        [TensorSpec("a", "F4", (3,))],
    ],
)
def test_writer_refuses_bad_specs(tmp_path: Path, specs: list[TensorSpec]) -> None:
    with pytest.raises(CheckpointWriteError):
        write_safetensors(tmp_path / "bad.safetensors", specs, lambda s: [bytes(max(s.nbytes, 0))])


# --- sharding ---------------------------------------------------------------------------------------------------


def test_sharded_checkpoint_matches_model_and_reference_reader(tmp_path: Path) -> None:
    config = get_model("tiny")
    checkpoint = make_checkpoint("tiny", tmp_path / "sharded", shards=3, seed=2)
    index = tmp_path / "sharded" / "model.safetensors.index.json"
    assert checkpoint.index == index
    doc = json.loads(index.read_text(), object_pairs_hook=lambda pairs: dict(_unique(pairs)))
    weight_map = doc["weight_map"]
    assert sorted(set(weight_map.values())) == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert set(weight_map) == {spec.name for spec in config.specs()}
    assert doc["metadata"]["total_size"] == config.nbytes() == checkpoint.total_bytes

    seen: dict[str, str] = {}
    for shard in sorted(set(weight_map.values())):
        tensors = load_file(tmp_path / "sharded" / shard)
        for name, array in tensors.items():
            assert name not in seen, f"{name} in {seen.get(name)} and {shard}"
            seen[name] = shard
            assert weight_map[name] == shard
            assert _bits(array) == _bits(materialize(NormalFill(seed=2), TensorSpec(name, "BF16", array.shape)))
    assert seen == weight_map
    assert validate_checkpoint(index).tensors.keys() == validate_checkpoint(tmp_path / "sharded").tensors.keys()

    sizes = [sum(info.nbytes for path, info in checkpoint.tensors.values() if path == f) for f in checkpoint.files]
    largest = max(spec.nbytes for spec in config.specs())
    assert all(abs(size - sum(sizes) / 3) <= largest for size in sizes), sizes


def _unique(pairs: list[tuple[str, object]]) -> list[tuple[str, object]]:
    keys = [key for key, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate keys in index: {keys}"
    return pairs


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 1000), min_size=1, max_size=30), data=st.data())
def test_shard_plan_keeps_order_fills_every_shard_and_balances(sizes: list[int], data: st.DataObject) -> None:
    specs = [TensorSpec(f"t{i}", "U8", (size,)) for i, size in enumerate(sizes)]
    shards = data.draw(st.integers(1, len(specs)), label="shards")
    plan = plan_shards(specs, shards)
    assert len(plan) == shards
    assert all(part for part in plan)
    assert [spec for part in plan for spec in part] == specs
    total, largest = sum(sizes), max(sizes)
    for part in plan:
        assert abs(sum(spec.nbytes for spec in part) - total / shards) <= largest


def test_shard_plan_refuses_more_shards_than_tensors() -> None:
    with pytest.raises(CheckpointWriteError):
        plan_shards([TensorSpec("a", "U8", (1,))], 2)


def test_write_sharded_returns_the_index_and_reference_reads_every_shard(tmp_path: Path) -> None:
    specs = [TensorSpec(f"w{i}", "F16", (i + 1, 3)) for i in range(7)]
    index = write_sharded(tmp_path / "out", specs, ConstantFill(value=1.5), shards=4)
    assert index.name == "model.safetensors.index.json"
    checkpoint = validate_checkpoint(index)
    assert len(checkpoint.files) == 4 and set(checkpoint.tensors) == {spec.name for spec in specs}
    for path in checkpoint.files:
        for array in load_file(path).values():
            assert np.all(array == np.float16(1.5))


# --- model shapes -------------------------------------------------------------------------------------------------


def test_llama_3_8b_shapes_and_sizes() -> None:
    config = get_model("llama-3-8b")
    assert config.param_count == 8_030_261_248  # "8B": 8.03e9
    assert config.nbytes("BF16") == 16_060_522_496  # the ~16.06 GB bf16 checkpoint
    specs = {spec.name: spec.shape for spec in config.specs()}
    assert specs[EMBED] == specs[LM_HEAD] == (128256, 4096)
    assert specs["model.layers.31.self_attn.k_proj.weight"] == (1024, 4096)
    assert specs["model.layers.0.self_attn.o_proj.weight"] == (4096, 4096)
    assert specs["model.layers.0.mlp.down_proj.weight"] == (4096, 14336)
    assert sum(spec.numel for spec in config.layer_specs(0)) == 218_112_000  # ~218M params per layer
    assert len(specs) == 2 + 32 * 9 + 1


def test_llama_3_2_1b_is_tied_and_about_1_24e9_params() -> None:
    config = get_model("llama-3.2-1b")
    assert config.param_count == 1_235_814_400
    names = [spec.name for spec in config.specs()]
    assert LM_HEAD not in names and EMBED in names and NORM in names
    assert dict((s.name, s.shape) for s in config.specs())["model.layers.15.self_attn.v_proj.weight"] == (512, 2048)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("scale", [1.0, 0.5, 0.1, 0.01, 0.0001])
def test_scaled_models_keep_head_layout(name: str, scale: float) -> None:
    base = get_model(name)
    small = base.scaled(scale)
    assert small.layers == base.layers and (small.heads, small.kv_heads) == (base.heads, base.kv_heads)
    assert small.hidden % small.heads == 0 and small.hidden % small.kv_heads == 0
    assert min(small.hidden, small.intermediate, small.vocab, small.head_dim) >= 1
    assert small.param_count <= base.param_count
    if scale == 1.0:
        assert small == base
    assert base.scaled(scale, layers=3).layers == 3


def test_scaled_8b_at_one_percent() -> None:
    small = get_model("llama-3-8b").scaled(0.01)
    assert (small.hidden, small.intermediate, small.head_dim, small.vocab) == (32, 143, 1, 1283)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_bad_scale_is_a_model_error(bad: float) -> None:
    with pytest.raises(ModelError, match="scale"):
        get_model("tiny").scaled(bad)


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(ModelError, match=r"tiny, llama-3\.2-1b, llama-3-8b"):
        get_model("llama-2-70b")


@pytest.mark.parametrize(
    ("name", "layer"),
    [
        ("model.layers.0.input_layernorm.weight", 0),
        ("model.layers.31.mlp.down_proj.weight", 31),
        ("model.layers.7.self_attn.q_proj.weight", 7),
        (EMBED, None),
        (NORM, None),
        (LM_HEAD, None),
        ("model.layers.x.mlp.up_proj.weight", None),
        ("xmodel.layers.3.mlp.up_proj.weight", None),
    ],
)
def test_layer_of(name: str, layer: int | None) -> None:
    assert layer_of(name) == layer


@pytest.mark.parametrize("name", ["tiny", "llama-3.2-1b", "llama-3-8b"])
@pytest.mark.parametrize("nodes", [1, 2, 3, 5])
def test_node_keys_cover_the_model_once(name: str, nodes: int) -> None:
    config = get_model(name)
    ranges = split_layers(config.layers, min(nodes, config.layers))
    per_node = [node_keys(config, start, end, config.layers) for start, end in ranges]
    assert set().union(*per_node) == {spec.name for spec in config.specs()}
    layer_keys = [key for keys in per_node for key in keys if layer_of(key) is not None]
    assert len(layer_keys) == len(set(layer_keys))
    for (start, end), keys in zip(ranges, per_node, strict=True):
        assert {layer_of(k) for k in keys} - {None} == set(range(start, end + 1))
        assert (EMBED in keys) == (start == 0 or (config.tied_embeddings and end == config.layers - 1))
        assert (NORM in keys) == (end == config.layers - 1)
        assert (LM_HEAD in keys) == (end == config.layers - 1 and not config.tied_embeddings)


def test_node_keys_middle_node_holds_layers_only() -> None:
    config = get_model("llama-3-8b")
    keys = node_keys(config, 10, 12, 32)
    assert len(keys) == 27 and all(layer_of(k) in (10, 11, 12) for k in keys)
    with pytest.raises(ModelError):
        node_keys(config, 5, 40, 32)
    with pytest.raises(ModelError):
        node_keys(config, 0, 3, 16)


def test_split_layers_is_even_and_contiguous() -> None:
    assert split_layers(32, 3) == ((0, 10), (11, 21), (22, 31))
    assert split_layers(16, 16)[-1] == (15, 15)


# --- make_checkpoint ----------------------------------------------------------------------------------------------


def test_make_checkpoint_into_a_folder_and_with_overrides(tmp_path: Path) -> None:
    checkpoint = make_checkpoint("llama-3-8b", tmp_path, scale=0.01, layers=2, dtype="F16", fill="constant")
    assert checkpoint.files == (tmp_path / "model.safetensors",)
    assert len(checkpoint.tensors) == 2 + 2 * 9 + 1
    assert checkpoint.total_bytes == get_model("llama-3-8b").scaled(0.01, layers=2).nbytes("F16")
    assert isinstance(validate(checkpoint.files[0]), CheckpointInfo)
    with pytest.raises(CheckpointWriteError, match=r"\.safetensors"):
        make_checkpoint("tiny", tmp_path / "model.bin")


# --- streaming: writing a big file needs one chunk of memory, not one tensor ----------------------------------------

_RSS_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    from mali_hil.harness.checkpoints import TensorSpec, validate, write_safetensors
    from mali_hil.harness.checkpoints.fill import ConstantFill, NormalFill

    kind, mib, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    fill = ConstantFill(value=0.5) if kind == "constant" else NormalFill(seed=1)
    elems = mib * 2**20 // 2
    spec = TensorSpec("big", "BF16", (elems // 4096, 4096))  # one tensor: a whole-tensor buffer would show
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    write_safetensors(out, [spec], fill)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    info = validate(out)
    print(after - before, info.tensor_bytes)
    """
)


@pytest.mark.parametrize(("kind", "mib"), [("constant", 512), ("normal", 96)])
def test_writing_streams_in_bounded_memory(tmp_path: Path, kind: str, mib: int) -> None:
    out = tmp_path / "big.safetensors"
    result = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, kind, str(mib), str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=True,
    )
    growth_kib, tensor_bytes = map(int, result.stdout.split())
    assert tensor_bytes == mib * 2**20
    assert growth_kib * 1024 < 64 * 2**20, f"peak RSS grew by {growth_kib} KiB while writing {mib} MiB"
