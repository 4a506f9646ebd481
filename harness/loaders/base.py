"""What every loader variant shares: options, the shard rule, the per-tensor plan, bound inputs, the Loader record.

A loader brings a checkpoint's tensors onto a tinygrad device and returns them realized there. Variants differ
only in *how* (whole file in RAM, on-device casts, chunks, mmap); what they load is fixed here, once, so every
variant loads exactly the same tensors into exactly the same dtypes and can be compared value for value.

Nothing here imports tinygrad: listing loaders, checking options or computing bounds must stay cheap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mali_hil.errors import MaliHilError
from mali_hil.harness.checkpoints import DTYPE_BITS, Checkpoint, layer_of, validate_checkpoint
from mali_hil.harness.records.jobs import DEFAULT_CHUNK_BYTES

#: Safetensors dtypes the loaders accept. Floats are converted to the target dtype; the rest pass through.
FLOAT_SOURCES = ("BF16", "F16", "F32")
PASSTHROUGH_SOURCES = ("BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64")
#: Target dtype name (tinygrad's) -> safetensors dtype of the tensors as they end on the device.
TARGETS: Mapping[str, str] = {"float16": "F16", "float32": "F32"}
ITEMSIZE: Mapping[str, int] = {dtype: DTYPE_BITS[dtype] // 8 for dtype in FLOAT_SOURCES + PASSTHROUGH_SOURCES}
#: Who loads a shard's non-layer tensors (embedding, final norm, lm_head). ``first-last``: the embedding on the
#: first node, the rest on the last (what a corrected exo does). ``exo-2024``: every node, as exo did after its
#: commit 2be4465, which filtered layers only (about 2.1 GB of fp16 on each node for Llama-3-8B).
KEEP_RULES = ("first-last", "exo-2024")


class LoaderError(MaliHilError, ValueError):
    """A loader name, loader options, or a checkpoint a loader cannot handle (named, with the fix)."""


class LoaderContractError(LoaderError, TypeError):
    """A loader returned something other than what it promises: a dict of name -> tinygrad Tensor, on the device
    it was given, floats in the dtype the job asked for. A mistake of the loader under test (status ``error``)."""


@dataclass(frozen=True)
class LoadOptions:
    """What to load and how.

    ``shard`` is exo's inclusive layer range ``(start, end)`` for this node (None: the whole model);
    ``n_layers`` is the model's layer count (None: one more than the highest layer index in the checkpoint),
    which decides whether this node is the last one. ``chunk_bytes`` caps the *source* bytes a chunked or
    streamed variant moves at once. ``target_dtype`` is what floating tensors become on the device.
    """

    shard: tuple[int, int] | None = None
    n_layers: int | None = None
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    target_dtype: str = "float16"
    keep: str = "first-last"

    def __post_init__(self) -> None:
        if self.keep not in KEEP_RULES:
            raise LoaderError(f"keep rule {self.keep!r} is not known; use one of {', '.join(KEEP_RULES)}")
        if self.target_dtype not in TARGETS:
            raise LoaderError(
                f"target_dtype {self.target_dtype!r} is not supported; use one of {', '.join(TARGETS)}"
                " (bfloat16 is never kept: Mali GPUs have no bf16 arithmetic)"
            )
        if self.chunk_bytes < max(ITEMSIZE.values()):
            raise LoaderError(f"chunk_bytes {self.chunk_bytes} is below one element (8 bytes); use e.g. 64 MiB")
        if self.shard is not None:
            shard = tuple(self.shard)  # a JSON job gives a list
            if len(shard) != 2 or not all(type(i) is int for i in shard) or not 0 <= shard[0] <= shard[1]:
                raise LoaderError(f"shard {self.shard} is not a layer range; need 0 <= start <= end, e.g. (0, 7)")
            object.__setattr__(self, "shard", shard)
        if self.n_layers is not None and self.n_layers < 1:
            raise LoaderError(f"n_layers {self.n_layers} must be at least 1")


@dataclass(frozen=True)
class TensorPlan:
    """One tensor to load: where its bytes are, what it is in the file and what it becomes on the device."""

    name: str
    path: Path
    offset: int  # absolute file offset of the tensor's first byte
    source_dtype: str  # safetensors dtype in the file
    final_dtype: str  # safetensors dtype on the device
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def source_bytes(self) -> int:
        return self.numel * ITEMSIZE[self.source_dtype]

    @property
    def final_bytes(self) -> int:
        return self.numel * ITEMSIZE[self.final_dtype]

    @property
    def converts(self) -> bool:
        return self.source_dtype != self.final_dtype

    def chunk_elements(self, chunk_bytes: int) -> int:
        """Elements per chunk: whole rows when a row fits in ``chunk_bytes`` of source, else single elements."""
        per_chunk = max(1, chunk_bytes // ITEMSIZE[self.source_dtype])
        row = math.prod(self.shape[1:]) if len(self.shape) > 1 else 1
        if 0 < row <= per_chunk:
            per_chunk -= per_chunk % row
        return max(1, min(per_chunk, self.numel))

    def chunks(self, chunk_bytes: int) -> list[tuple[int, int]]:
        """``(first element, element count)`` of each chunk, in file order."""
        step = self.chunk_elements(chunk_bytes)
        return [(start, min(step, self.numel - start)) for start in range(0, self.numel, step)]


@dataclass(frozen=True)
class BoundInputs:
    """The numbers a loader's memory bounds are formulas of, computed from checkpoint + options (bytes)."""

    tensors: int
    source_bytes: int  # selected tensors as stored in the file
    final_bytes: int  # selected tensors as they end on the device
    converted_source_bytes: int  # source bytes of tensors whose dtype changes
    converted_final_bytes: int
    distinct_converted_source_bytes: int  # one per distinct byte size: what tinygrad's LRU cache can keep
    distinct_converted_final_bytes: int
    largest_source_bytes: int
    largest_final_bytes: int
    largest_widened_bytes: int  # float32 copy of the largest BF16 tensor (a host bf16 -> f32 -> f16 cast)
    chunk_bytes: int
    largest_chunk_source_bytes: int
    largest_chunk_final_bytes: int
    largest_converted_chunk_bytes: int  # max over converted tensors of one chunk's source + final bytes
    file_bytes: int  # whole files that hold at least one selected tensor, headers included

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def as_checkpoint(checkpoint: Checkpoint | str | Path) -> Checkpoint:
    """A path is validated here (strictly, reading headers only); a ``Checkpoint`` was validated when made."""
    return checkpoint if isinstance(checkpoint, Checkpoint) else validate_checkpoint(checkpoint)


def select_keys(checkpoint: Checkpoint, options: LoadOptions) -> tuple[str, ...]:
    """The tensors this node loads, in checkpoint order (exo's rule after commit 2be4465).

    Layers ``start..end``; the embedding on the first node; every other non-layer tensor (final norm,
    lm_head) on the last node. A tied model has no ``lm_head``: its last node needs the embedding too.
    Same answer as ``mali_hil.harness.checkpoints.node_keys`` for its models, but read off the checkpoint's own names
    (a checkpoint does not say which model config made it), so extra non-layer tensors go to the last node.
    With ``keep="exo-2024"`` every node keeps every non-layer tensor, as exo's 2be4465 did.
    """
    names = tuple(checkpoint.tensors)
    if options.shard is None:
        return names
    layers = [i for i in map(layer_of, names) if i is not None]
    n_layers = options.n_layers if options.n_layers is not None else (max(layers) + 1 if layers else 0)
    start, end = options.shard
    if end >= n_layers:
        raise LoaderError(
            f"shard {options.shard} ends past the model's last layer {n_layers - 1}; pick end <= {n_layers - 1}"
            " or pass n_layers"
        )
    first, last = start == 0, end == n_layers - 1
    tied = not any(_is_lm_head(name) for name in names)

    def wanted(name: str) -> bool:
        layer = layer_of(name)
        if layer is not None:
            return start <= layer <= end
        if options.keep == "exo-2024":
            return True
        if _is_embedding(name):
            return first or (last and tied)
        return last

    return tuple(name for name in names if wanted(name))


def plan_load(checkpoint: Checkpoint, options: LoadOptions) -> tuple[TensorPlan, ...]:
    """The selected tensors with their file offsets and final dtypes; refuses dtypes no variant can load."""
    data_starts: dict[Path, int] = {}
    plans = []
    for name in select_keys(checkpoint, options):
        path, info = checkpoint.tensors[name]
        if info.dtype not in FLOAT_SOURCES + PASSTHROUGH_SOURCES:
            raise LoaderError(
                f"tensor {name!r} in {path} is {info.dtype}; loaders handle {', '.join(FLOAT_SOURCES)}"
                f" (converted to {options.target_dtype}) and {', '.join(PASSTHROUGH_SOURCES)} (kept)"
            )
        if path not in data_starts:
            data_starts[path] = _data_start(path)
        final = final_dtype(info.dtype, options.target_dtype)
        plans.append(TensorPlan(name, path, data_starts[path] + info.start, info.dtype, final, tuple(info.shape)))
    return tuple(plans)


def final_dtype(source_dtype: str, target_dtype: str, keeps_float_dtype: bool = False) -> str:
    """The safetensors dtype a tensor stored as ``source_dtype`` ends in on the device: a float in the job's
    ``target_dtype`` (or as stored, for a loader that ``keeps_float_dtype``), anything else as stored. The one rule
    the loaders follow and the worker's contract check holds them to."""
    if source_dtype in FLOAT_SOURCES and not keeps_float_dtype:
        return TARGETS[target_dtype]
    return source_dtype


def bound_inputs(checkpoint: Checkpoint | str | Path, options: LoadOptions) -> BoundInputs:
    checkpoint = as_checkpoint(checkpoint)
    plans = plan_load(checkpoint, options)
    converted = [p for p in plans if p.converts]
    chunk = options.chunk_bytes

    def most(values: Any) -> int:
        return max(values, default=0)

    return BoundInputs(
        tensors=len(plans),
        source_bytes=sum(p.source_bytes for p in plans),
        final_bytes=sum(p.final_bytes for p in plans),
        converted_source_bytes=sum(p.source_bytes for p in converted),
        converted_final_bytes=sum(p.final_bytes for p in converted),
        distinct_converted_source_bytes=sum({p.source_bytes for p in converted}),
        distinct_converted_final_bytes=sum({p.final_bytes for p in converted}),
        largest_source_bytes=most(p.source_bytes for p in plans),
        largest_final_bytes=most(p.final_bytes for p in plans),
        largest_widened_bytes=most(4 * p.numel for p in converted if p.source_dtype == "BF16"),
        chunk_bytes=chunk,
        largest_chunk_source_bytes=most(p.chunk_elements(chunk) * ITEMSIZE[p.source_dtype] for p in plans),
        largest_chunk_final_bytes=most(p.chunk_elements(chunk) * ITEMSIZE[p.final_dtype] for p in plans),
        largest_converted_chunk_bytes=most(
            p.chunk_elements(chunk) * (ITEMSIZE[p.source_dtype] + ITEMSIZE[p.final_dtype]) for p in converted
        ),
        file_bytes=sum(path.stat().st_size for path in {p.path for p in plans}),
    )


LoadFn = Callable[[Any, str, LoadOptions], dict[str, Any]]
BoundFn = Callable[[BoundInputs], int]

DEFAULT_BOUND = "final_bytes + largest_source_bytes + largest_final_bytes"

#: What a fresh process keeps of its first tinygrad kernels past the job's cleanup (tinygrad's caches of the
#: kernels it scheduled and compiled, a few MiB), beyond what a variant's formula counts. Each job runs in a fresh
#: child of the worker, as a board's process loading once does, so a variant that converts with kernels pays it in
#: every job; the worker pays the one-off part before it forks (tinygrad's imports, its compiled rewrite rules and
#: its default device: mali_hil.harness.worker.warm), which had been 48 MiB of it. Measured on the emulated G610
#: (BF16; tiny, and Llama-3.2-1B and Llama-3-8B shapes at 5-10 %): growth past the formula 2.3-2.7 MiB (`mmap`),
#: 2.9-3.6 MiB (`fix_bf16-host`), 5.2 MiB (`fix_bf16-device`). 8 MiB: the largest, with room.
FIRST_KERNELS_RAM = 8 << 20


def first_kernels_ram(b: BoundInputs) -> int:
    """FIRST_KERNELS_RAM when some selected tensor is converted (a converting variant runs kernels), else 0."""
    return FIRST_KERNELS_RAM if b.converted_source_bytes else 0


def default_bound(b: BoundInputs) -> int:
    """final_bytes + largest_source_bytes + largest_final_bytes, for device and RAM alike: the bound of a loader
    that declares none. What a streaming loader needs with one whole tensor in flight: the final buffers, plus
    that tensor as read (source) and as converted (final), on the host or the device (one pool on Mali). A loader
    that goes tensor by tensor fits it at any chunk size; one that holds a second tensor, every chunk, the whole
    file or the model twice does not. A loader that needs more states its own bounds."""
    return b.final_bytes + b.largest_source_bytes + b.largest_final_bytes


@dataclass(frozen=True)
class JudgedBounds:
    """The device and RAM bounds (bytes) a load is judged against; ``defaulted`` names those that are
    ``default_bound`` because the loader declares none ("device", "RAM")."""

    device: int
    ram: int
    defaulted: tuple[str, ...] = ()

    def source(self, which: str) -> str:
        """How a message names the ``which`` ("device" or "RAM") bound."""
        if which in self.defaulted:
            return f"the default {which} bound (it declares none: {DEFAULT_BOUND})"
        return f"its declared {which} bound"


@dataclass(frozen=True)
class Loader:
    """A loader variant under test: ``load(checkpoint, device, options) -> {name: realized Tensor}``.

    ``device_bound``/``ram_bound`` give the most device memory / RAM (host plus device: one pool on Mali) the
    loader's own allocations may reach, as formulas of ``BoundInputs``; None when the loader declares none, and
    is then judged against ``default_bound`` (``bounds_or_default``).
    ``device_half`` says the loader converts to half with kernels on the device: its values then depend on the
    device's fp16 arithmetic, which the emulator can only emulate where the backend lacks ``cl_khr_fp16``.
    ``keeps_float_dtype`` says floats stay in their stored dtype (tinygrad's own ``nn.state`` route: bf16 stays
    bf16, stored as ``ushort`` on OpenCL); the contract check and the oracle then expect the stored values.
    """

    name: str
    load: LoadFn
    device_bound: BoundFn | None = None
    ram_bound: BoundFn | None = None
    description: str = ""
    device_half: bool = False
    keeps_float_dtype: bool = False

    def __call__(self, checkpoint: Any, device: str, options: LoadOptions | None = None) -> dict[str, Any]:
        return self.load(checkpoint, device, options if options is not None else LoadOptions())

    def bounds(self, checkpoint: Checkpoint | str | Path, options: LoadOptions) -> tuple[int | None, int | None]:
        """(device bound, RAM bound) in bytes for this checkpoint and options."""
        inputs = bound_inputs(checkpoint, options)
        device = self.device_bound(inputs) if self.device_bound else None
        ram = self.ram_bound(inputs) if self.ram_bound else None
        return device, ram

    @property
    def defaulted(self) -> tuple[str, ...]:
        """The bounds ("device", "RAM") this loader does not declare, so is judged on by ``default_bound``."""
        return tuple(
            which for which, bound in (("device", self.device_bound), ("RAM", self.ram_bound)) if bound is None
        )

    @property
    def bounds_kind(self) -> str:
        """For reports: ``declared``, ``default``, or ``default device``/``default RAM`` when only one is."""
        if not self.defaulted:
            return "declared"
        return "default" if len(self.defaulted) == 2 else f"default {self.defaulted[0]}"

    def bounds_or_default(self, checkpoint: Checkpoint | str | Path, options: LoadOptions) -> JudgedBounds:
        """``bounds`` with each undeclared bound replaced by ``default_bound``: a loader escapes being judged on
        memory only by declaring bounds of its own, never by declaring none."""
        inputs = bound_inputs(checkpoint, options)
        device, ram = self.device_bound or default_bound, self.ram_bound or default_bound
        return JudgedBounds(device(inputs), ram(inputs), self.defaulted)


def _is_embedding(name: str) -> bool:
    return "embed_tokens" in name or "tok_embeddings" in name


def _is_lm_head(name: str) -> bool:
    return name.startswith(("lm_head.", "output."))


def _data_start(path: Path) -> int:
    # The header was validated already; its length prefix is all that is needed to place the byte buffer.
    with path.open("rb") as handle:
        return 8 + int.from_bytes(handle.read(8), "little")
