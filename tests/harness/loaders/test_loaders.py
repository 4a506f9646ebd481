"""The loader variants on real tinygrad and real PoCL, behind the emulated Mali's layer when it can be built.

Each variant runs once, in its own subprocess (tests/harness/loaders/loaders_support.py), over every checkpoint of
the session; the tests then judge the saved results against an independent oracle: the safetensors library
reads the files and ml_dtypes/numpy convert (bf16 -> float32 -> float16). NaNs compare by "is NaN" and sign,
never payload; every other value (-0 included) by bits. F16 sources must come back bit for bit.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

from mali_hil.harness.checkpoints import CheckpointError, get_model, make_checkpoint, node_keys
from mali_hil.harness.loaders import Loader, LoaderError, LoadOptions, TensorPlan, get_loader, register, select_keys
from mali_hil.harness.loaders import registry as loader_registry
from mali_hil.harness.loaders.base import ITEMSIZE

ROOT = Path(__file__).resolve().parents[3]
BUILTINS = ("naive", "fix_bf16-device", "fix_bf16-host", "chunked", "mmap")  # the variants that convert floats
# keeps floats as stored, so its values are not these tests' fp16 ones: the property suite judges them (stored)
EVERY_BUILTIN = (*BUILTINS, "tinygrad-nn")
EXTERNAL = "tests.harness.loaders.loaders_support:external_load"
VARIANTS = (*BUILTINS, EXTERNAL)
BOARD = "mali-g610:3GiB" if importlib.util.find_spec("mali_hil.emulator.build") else None
SMALL_CHUNK = 4096  # forces many chunks (and a tail) on the 256x256 tensors
BOUNDS_CHUNK = 1 << 20
# tinygrad emulates half in float32 when the device lacks cl_khr_fp16, and that emulation flushes values below
# fp16's smallest normal (2**-14) to a zero of the same sign, on load and store alike. Only casts on the device
# see it, and only jobs whose conversion touches fp16 (bf16 -> float32 on the device was measured exact).
FLUSHES = {"fix_bf16-device"}
FLUSHED_JOBS = {"bf16", "f32", "f16_f32", "tiny"}
FLUSH_BELOW = 2.0**-14
FLUSH_REASON = "tinygrad's emulated fp16 (no cl_khr_fp16) flushes fp16 subnormals in on-device casts"


def _flushes(runs: dict, variant: str, job: str) -> bool:
    """Only where the board's backend has no cl_khr_fp16: with the fp16 PoCL (or a system PoCL that has it on this
    CPU) tinygrad casts natively and keeps subnormals."""
    return variant in FLUSHES and job in FLUSHED_JOBS and not runs[variant].get("fp16_native", False)


def _bits(dtype: str, values: np.ndarray) -> np.ndarray:
    return values.astype(np.uint16).view(ml_dtypes.bfloat16 if dtype == "BF16" else np.float16)


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loader-checkpoints")
    rng = np.random.default_rng(7)
    every = np.arange(1 << 16, dtype=np.uint32).reshape(256, 256)
    save_file(
        {
            "model.layers.0.all_bf16": _bits("BF16", every),
            "model.layers.0.scalar": _bits("BF16", np.array(0xB340)).reshape(()),  # -1.5*2^-25 -> -2^-24
            "model.layers.0.empty": np.zeros((0, 4), ml_dtypes.bfloat16),
            "model.layers.0.ids": np.arange(-3, 5, dtype=np.int64),
            "model.layers.0.mask": np.array([True, False, True]),
        },
        root / "bf16.safetensors",
    )
    save_file({"model.layers.0.all_f16": _bits("F16", every)}, root / "f16.safetensors")
    # float32 patterns: every bf16 high half, low halves with fp16 rounding ties and near-ties, and random ones
    lows = np.array([0x0000, 0x1000, 0x3000, 0xF000, 0x0FFF, 0x1001], dtype=np.uint32)
    low = np.where(every % 7 < 6, lows[every % 7 % 6], rng.integers(0, 1 << 16, every.shape, dtype=np.uint32))
    save_file(
        {"model.layers.0.f32": ((every << 16) | low).astype(np.uint32).view(np.float32)}, root / "f32.safetensors"
    )
    tiny = make_checkpoint("tiny", root / "tiny", layers=4, fill="special", shards=2)
    big = {f"model.layers.{i}.w": rng.integers(0, 1 << 16, (1024, 4096), dtype=np.uint16) for i in range(4)}
    save_file({k: v.view(ml_dtypes.bfloat16) for k, v in big.items()}, root / "bounds.safetensors")
    return {
        "bf16": root / "bf16.safetensors",
        "f16": root / "f16.safetensors",
        "f32": root / "f32.safetensors",
        "tiny": tiny.index,
        "bounds": root / "bounds.safetensors",
    }


def _jobs(ckpts: dict[str, Path]) -> list[dict]:
    def job(job_id: str, ckpt: str, save: bool = True, **options) -> dict:
        return {"id": job_id, "checkpoint": str(ckpts[ckpt]), "save": save, "options": options}

    return [
        job("bf16", "bf16", chunk_bytes=SMALL_CHUNK),
        job("bf16_f32", "bf16", chunk_bytes=SMALL_CHUNK, target_dtype="float32"),
        job("f16", "f16", chunk_bytes=SMALL_CHUNK),
        job("f16_f32", "f16", chunk_bytes=SMALL_CHUNK, target_dtype="float32"),
        job("f32", "f32", chunk_bytes=SMALL_CHUNK),
        job("tiny", "tiny", chunk_bytes=SMALL_CHUNK),
        job("first", "tiny", save=False, shard=[0, 1]),
        job("middle", "tiny", save=False, shard=[1, 2]),
        job("last", "tiny", save=False, shard=[2, 3]),
        job("bounds", "bounds", save=False, chunk_bytes=BOUNDS_CHUNK),
    ]


@pytest.fixture(scope="session")
def runs(ckpts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """One subprocess per variant, all started at once; {variant: report with "out" (npz folder)}."""
    procs = {}
    for variant in VARIANTS:
        out = tmp_path_factory.mktemp("run")
        spec = out / "spec.json"
        spec.write_text(json.dumps({"loader": variant, "board": BOARD, "out": str(out), "jobs": _jobs(ckpts)}))
        cmd = [sys.executable, "-m", "tests.harness.loaders.loaders_support", str(spec)]
        procs[variant] = (
            out,
            subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        )
    reports = {}
    for variant, (out, proc) in procs.items():
        _, stderr = proc.communicate(timeout=900)
        report_file = out / "report.json"
        reports[variant] = json.loads(report_file.read_text()) if report_file.exists() else {"crash": stderr[-4000:]}
        reports[variant]["out"] = out
    return reports


def _result(runs: dict, variant: str, job: str) -> dict:
    report = runs[variant]
    assert "crash" not in report, f"{variant} runner died:\n{report.get('crash')}"
    result = report["jobs"][job]
    assert "error" not in result, f"{variant} failed {job}: {result['error']}\n{result['trace']}"
    return result


def _loaded(runs: dict, variant: str, job: str) -> dict[str, np.ndarray]:
    _result(runs, variant, job)
    return dict(np.load(runs[variant]["out"] / f"{job}.npz"))


def _oracle(path: Path, target: str = "float16") -> dict[str, np.ndarray]:
    files = [path] if path.suffix == ".safetensors" else sorted(path.parent.glob("*.safetensors"))
    out = {}
    for file in files:
        for name, array in load_file(file).items():
            with np.errstate(over="ignore", invalid="ignore"):
                if array.dtype in (ml_dtypes.bfloat16, np.float16, np.float32):
                    array = array.astype(np.float32).astype(target) if target == "float16" else array.astype(target)
            out[name] = array
    return out


def _assert_same(got: np.ndarray, want: np.ndarray, name: str, flush_below: float | None = None) -> None:
    """Equal by bits, NaN by NaN-ness and sign; with ``flush_below``, results of at most that magnitude may come back as
    a zero of their sign (the documented tinygrad flush) and nothing else may differ."""
    assert got.dtype == want.dtype and got.shape == want.shape, (
        f"{name}: {got.dtype}{got.shape} != {want.dtype}{want.shape}"
    )
    if got.dtype.kind != "f":
        np.testing.assert_array_equal(got, want, err_msg=name)
        return
    nan = np.isnan(want)
    wrong = (np.isnan(got) != nan) | (np.signbit(got) != np.signbit(want))
    wrong |= ~nan & (got.view(f"u{got.itemsize}") != want.view(f"u{want.itemsize}"))
    if flush_below is not None:
        with np.errstate(invalid="ignore"):
            wrong &= ~((np.abs(want.astype(np.float64)) <= flush_below) & (got == 0))
    assert not wrong.any(), (
        f"{name}: {int(wrong.sum())} values differ, e.g. got {got[wrong][:4]} want {want[wrong][:4]}"
    )


NUMERIC_JOBS = {"bf16": ("bf16", "float16"), "bf16_f32": ("bf16", "float32"), "f32": ("f32", "float16"),
                "f16_f32": ("f16", "float32"), "tiny": ("tiny", "float16")}  # fmt: skip


@pytest.mark.parametrize(("variant", "job"), [(v, j) for v in VARIANTS for j in NUMERIC_JOBS])
def test_values_match_oracle(request: pytest.FixtureRequest, runs: dict, ckpts: dict, variant: str, job: str) -> None:
    if _flushes(runs, variant, job):
        request.applymarker(pytest.mark.xfail(strict=True, reason=FLUSH_REASON))
    ckpt, target = NUMERIC_JOBS[job]
    got, want = _loaded(runs, variant, job), _oracle(ckpts[ckpt], target)
    assert set(got) == set(want)
    for name in want:
        _assert_same(got[name], want[name], name)


@pytest.mark.parametrize("job", sorted(FLUSHED_JOBS))
@pytest.mark.parametrize("variant", sorted(FLUSHES))
def test_on_device_casts_differ_only_by_the_subnormal_flush(runs: dict, ckpts: dict, variant: str, job: str) -> None:
    ckpt, target = NUMERIC_JOBS[job]
    got, want = _loaded(runs, variant, job), _oracle(ckpts[ckpt], target)
    for name in want:
        _assert_same(got[name], want[name], name, flush_below=FLUSH_BELOW)


@pytest.mark.parametrize("variant", VARIANTS)
def test_f16_source_is_bit_exact(runs: dict, ckpts: dict, variant: str) -> None:
    got = _loaded(runs, variant, "f16")["model.layers.0.all_f16"]
    want = load_file(ckpts["f16"])["model.layers.0.all_f16"]
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))  # NaN payloads included


@pytest.mark.parametrize("variant", VARIANTS)
def test_edge_tensors_and_results_are_realized(runs: dict, variant: str) -> None:
    result, got = _result(runs, variant, "bf16"), _loaded(runs, variant, "bf16")
    assert all(result["realized"].values()), result["realized"]
    assert result["read_at_mismatches"] == []  # the bounded read-back helper sees what tinygrad sees
    scalar = 0x8000 if _flushes(runs, variant, "bf16") else 0x8001  # -1.5*2**-25 rounds to -2**-24 (or is flushed)
    assert got["model.layers.0.scalar"].shape == () and got["model.layers.0.scalar"].view(np.uint16) == scalar
    assert got["model.layers.0.empty"].shape == (0, 4) and got["model.layers.0.empty"].dtype == np.float16
    np.testing.assert_array_equal(got["model.layers.0.ids"], np.arange(-3, 5, dtype=np.int64))
    np.testing.assert_array_equal(got["model.layers.0.mask"], [True, False, True])


@pytest.mark.parametrize("job", [*NUMERIC_JOBS, "f16"])
def test_all_variants_agree(runs: dict, job: str) -> None:
    reference = _loaded(runs, "chunked", job)
    for variant in VARIANTS:
        got = _loaded(runs, variant, job)
        for name in reference:
            flush = FLUSH_BELOW if _flushes(runs, variant, job) else None
            _assert_same(got[name], reference[name], f"{variant}/{job}/{name}", flush_below=flush)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("job", "shard"), [("first", (0, 1)), ("middle", (1, 2)), ("last", (2, 3))])
def test_shard_loads_exactly_the_nodes_keys(runs: dict, variant: str, job: str, shard: tuple[int, int]) -> None:
    keys = _result(runs, variant, job)["keys"]
    assert keys == list(node_keys(get_model("tiny").scaled(layers=4), *shard))


@pytest.mark.parametrize("variant", BUILTINS)
def test_device_peak_stays_within_declared_bound(runs: dict, variant: str) -> None:
    pytest.importorskip("mali_hil.runtime.layer_stats")
    result = _result(runs, variant, "bounds")
    if result["device_peak_bytes"] is None:
        pytest.skip("no layer in front of the device: mali_hil.emulator.build is missing")
    assert result["device_peak_bytes"] <= result["bounds"][0]


def test_chunked_stays_within_its_bounds_where_the_2024_loaders_do_not(runs: dict) -> None:
    pytest.importorskip("mali_hil.runtime.layer_stats")
    chunked, naive = _result(runs, "chunked", "bounds"), _result(runs, "naive", "bounds")
    exo_device = _result(runs, "fix_bf16-device", "bounds")
    if chunked["device_peak_bytes"] is None:
        pytest.skip("no layer in front of the device: mali_hil.emulator.build is missing")
    device_bound, ram_bound = chunked["bounds"]
    assert chunked["device_peak_bytes"] <= device_bound
    assert chunked["ram_peak_bytes"] <= ram_bound + (16 << 20)  # slack: Python and tinygrad bookkeeping
    assert naive["ram_peak_bytes"] > ram_bound  # whole file + host copies + device: the >= 2x of 2024
    assert exo_device["device_peak_bytes"] > device_bound  # bf16 source and fp16 result on the device at once


# --- no device needed ------------------------------------------------------------------------------------------


def test_options_are_checked() -> None:
    for bad in ({"target_dtype": "bfloat16"}, {"chunk_bytes": 4}, {"shard": (3, 1)}, {"n_layers": 0}):
        with pytest.raises(LoaderError) as info:
            LoadOptions(**bad)
        assert isinstance(info.value, ValueError)


@given(
    shape=st.lists(st.integers(0, 40), max_size=3),
    chunk=st.integers(8, 300),
    dtype=st.sampled_from(["BF16", "F32", "I64"]),
)
def test_chunks_cover_the_tensor_in_order_within_chunk_bytes(shape: list[int], chunk: int, dtype: str) -> None:
    plan = TensorPlan("t", Path("x"), 0, dtype, dtype, tuple(shape))
    position = 0
    for first, count in plan.chunks(chunk):
        assert first == position and count >= 1 and count * ITEMSIZE[dtype] <= chunk
        position += count
    assert position == plan.numel


@pytest.mark.parametrize(("model", "layers"), [("tiny", 4), ("llama-3.2-1b", 3)])
def test_select_keys_follows_exos_shard_rule(tmp_path: Path, model: str, layers: int) -> None:
    config = get_model(model).scaled(1 / 64 if model != "tiny" else 1.0, layers=layers)
    checkpoint = make_checkpoint(config, tmp_path / "m.safetensors", fill="constant")
    for start, end in itertools.combinations_with_replacement(range(layers), 2):
        assert select_keys(checkpoint, LoadOptions(shard=(start, end))) == node_keys(config, start, end)
    with pytest.raises(LoaderError, match="last layer"):
        select_keys(checkpoint, LoadOptions(shard=(0, layers)))


@pytest.mark.parametrize("variant", EVERY_BUILTIN)
def test_checkpoint_is_validated_before_the_device_is_touched(tmp_path: Path, variant: str) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError):
        get_loader(variant).load(bad, "NO_SUCH_DEVICE", LoadOptions())  # a device access would raise otherwise


def test_registry_resolves_builtins_external_callables_objects_and_entry_points(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert set(EVERY_BUILTIN) <= set(loader_registry.available())
    wrapped = get_loader(EXTERNAL)
    assert wrapped.name == EXTERNAL and wrapped.device_bound is None and wrapped.description.startswith("A user's")
    assert get_loader("tests.harness.loaders.loaders_support:EXTERNAL").name == "external-object"
    point = EntryPoint(name="ext-ep", value=EXTERNAL, group=loader_registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(loader_registry, "entry_points", lambda group: [point] if group == point.group else [])
    assert get_loader("ext-ep").load is wrapped.load and "ext-ep" in loader_registry.available()


def test_registry_errors_name_the_problem() -> None:
    with pytest.raises(LoaderError, match="available: naive, tinygrad-nn, fix_bf16-device") as info:
        get_loader("no-such-loader")
    assert isinstance(info.value, ValueError) and "chunked" in str(info.value)
    with pytest.raises(LoaderError, match="already registered"):
        register(Loader(name="chunked", load=lambda c, d, o: {}))
    with pytest.raises(LoaderError, match="cannot import"):
        get_loader("no_such_module_xyz:load")
    with pytest.raises(LoaderError, match="no attribute"):
        get_loader("tests.harness.loaders.loaders_support:missing")


def test_an_undeclared_bound_is_judged_by_the_default(tmp_path: Path) -> None:
    """A plain callable, and a Loader without bounds, get ``default_bound`` for both; a declared bound is kept and
    only the missing one defaults. Fails if a loader without bounds escapes the memory checks again (None bounds),
    or if the default ever replaces what a loader declares."""
    from mali_hil.harness.loaders.base import bound_inputs, default_bound

    checkpoint = make_checkpoint(get_model("tiny"), tmp_path / "m.safetensors", fill="constant")
    options = LoadOptions(chunk_bytes=BOUNDS_CHUNK)
    inputs = bound_inputs(checkpoint, options)
    one_tensor = inputs.final_bytes + inputs.largest_source_bytes + inputs.largest_final_bytes
    assert default_bound(inputs) == one_tensor > inputs.final_bytes
    plain, chunked = get_loader(EXTERNAL), get_loader("chunked")
    bare = Loader(name="bare", load=plain.load)
    half = Loader(name="half", load=plain.load, device_bound=lambda b: 1)
    judged = {loader.name: loader.bounds_or_default(checkpoint, options) for loader in (plain, bare, half, chunked)}
    for name in (EXTERNAL, "bare"):
        assert (judged[name].device, judged[name].ram, judged[name].defaulted) == (one_tensor, one_tensor,
                                                                                 ("device", "RAM"))  # fmt: skip
    assert "the default RAM bound (it declares none" in judged["bare"].source("RAM")
    assert (judged["half"].device, judged["half"].ram, judged["half"].defaulted) == (1, one_tensor, ("RAM",))
    assert judged["half"].source("device") == "its declared device bound"
    assert (judged["chunked"].device, judged["chunked"].ram) == chunked.bounds(checkpoint, options)
    assert [loader.bounds_kind for loader in (chunked, plain, half)] == ["declared", "default", "default RAM"]


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("os:system", "takes (command), but a loader is called as f(checkpoint, device, options)"),
        ("os:sep", "is a str, not a Loader or a callable"),
        ("json:dumps", "takes (obj, *, skipkeys"),
    ],
)
def test_a_loader_that_cannot_be_called_as_one_is_refused_before_any_job(spec: str, says: str) -> None:
    with pytest.raises(LoaderError) as refused:
        get_loader(spec)
    assert says in str(refused.value)


@pytest.mark.parametrize(
    ("source", "says"),
    [("def load(:\n", "SyntaxError"), ("raise RuntimeError('no GPU here')\n", "RuntimeError: no GPU here")],
)
def test_a_loader_module_that_fails_to_import_is_the_loaders_error(
    source: str, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # before: anything but ImportError escaped as the worker's own failure (infra-error), blaming the harness
    (tmp_path / "mali_hil_broken_loader.py").write_text(source, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(LoaderError) as refused:
        get_loader("mali_hil_broken_loader:load")
    assert "importing 'mali_hil_broken_loader' failed" in str(refused.value) and says in str(refused.value)


def test_chunked_reads_a_whole_range_and_names_a_file_cut_after_its_check(tmp_path: Path) -> None:
    """Catches: a short ``preadv`` taken as the whole chunk (the rest of the device range left as it was), and a
    file cut between its check and the read passing silently or raising from deep inside numpy."""
    from mali_hil.harness.loaders.chunked import _Source

    path = tmp_path / "data.bin"
    data = np.arange(1 << 20, dtype=np.uint32).view(np.uint8)
    path.write_bytes(data.tobytes())
    source = _Source.open(path)
    try:
        target = np.zeros(data.size - 100, dtype=np.uint8)
        source.read_into(target, 100)
        assert np.array_equal(target, data[100:])
        with path.open("r+b") as handle:
            handle.truncate(4096)
        with pytest.raises(LoaderError, match="ends at byte 4096, inside a tensor: it was cut after it was checked"):
            source.read_into(np.zeros(8192, dtype=np.uint8), 0)
    finally:
        source.close()
