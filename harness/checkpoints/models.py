"""Llama-style model shapes and their Hugging Face tensor names, without any weights.

Tensor shapes are Hugging Face's ``[out_features, in_features]``. With tied embeddings there is no
``lm_head.weight``: the output layer reuses ``model.embed_tokens.weight``.

Scaling rule (``ModelConfig.scaled``): head counts never change (so the GQA ratio and the attention
layout stay those of the real model). ``head_dim`` becomes ``max(1, round(head_dim * scale))``;
``hidden`` becomes ``heads * max(1, round(hidden * scale / heads))``, so it stays a multiple of the head
count (and of the KV head count, which divides it); ``intermediate`` and ``vocab`` become
``max(1, round(x * scale))``. The layer count is kept unless ``layers=`` overrides it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from mali_hil.harness.checkpoints.faults import ModelError
from mali_hil.harness.checkpoints.format import DTYPE_BITS, TensorSpec

EMBED = "model.embed_tokens.weight"
NORM = "model.norm.weight"
LM_HEAD = "lm_head.weight"
_LAYER = re.compile(r"model\.layers\.(\d+)\.")


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a Llama-style decoder."""

    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool

    def __post_init__(self) -> None:
        sizes = (self.layers, self.hidden, self.intermediate, self.heads, self.kv_heads, self.head_dim, self.vocab)
        if any(type(n) is not int or n < 1 for n in sizes):
            raise ModelError(f"model {self.name!r}: every size must be a positive integer, got {sizes}")
        if self.heads % self.kv_heads:
            raise ModelError(f"model {self.name!r}: {self.heads} heads do not split into {self.kv_heads} KV groups")

    def scaled(self, scale: float = 1.0, layers: int | None = None) -> ModelConfig:
        """A smaller (or equal) model with the same head layout; see the module docstring for the rule."""
        if not (isinstance(scale, int | float) and math.isfinite(scale) and 0 < scale <= 1):
            raise ModelError(f"scale is the fraction of each dimension to keep, in (0, 1], not {scale!r}")
        if layers is not None and (type(layers) is not int or layers < 1):
            raise ModelError(f"layers must be a positive integer, not {layers!r}")
        if scale == 1.0:
            return self if layers is None else replace(self, layers=layers)
        name = f"{self.name}@{scale:g}" + ("" if layers is None else f"x{layers}")
        return replace(
            self,
            name=name,
            layers=self.layers if layers is None else layers,
            hidden=self.heads * _shrink(self.hidden / self.heads, scale),
            intermediate=_shrink(self.intermediate, scale),
            head_dim=_shrink(self.head_dim, scale),
            vocab=_shrink(self.vocab, scale),
        )

    def specs(self, dtype: str = "BF16") -> tuple[TensorSpec, ...]:
        """Every tensor of the model in Hugging Face names, in load order (embedding, layers, norm, head)."""
        embed, *tail = self._outer_specs(dtype)
        specs = [embed]
        for i in range(self.layers):
            specs.extend(self.layer_specs(i, dtype))
        return (*specs, *tail)

    def _outer_specs(self, dtype: str) -> tuple[TensorSpec, ...]:
        """The tensors outside the layers: the embedding, then the final norm and (untied) the head."""
        if dtype not in DTYPE_BITS:
            raise ModelError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPE_BITS)}")
        head = () if self.tied_embeddings else (TensorSpec(LM_HEAD, dtype, (self.vocab, self.hidden)),)
        return (TensorSpec(EMBED, dtype, (self.vocab, self.hidden)), TensorSpec(NORM, dtype, (self.hidden,)), *head)

    @property
    def tensor_count(self) -> int:
        return len(self._outer_specs("BF16")) + self.layers * len(self.layer_specs(0))

    def layer_specs(self, i: int, dtype: str = "BF16") -> tuple[TensorSpec, ...]:
        prefix = f"model.layers.{i}."
        q_out, kv_out = self.heads * self.head_dim, self.kv_heads * self.head_dim
        shapes = {
            "input_layernorm.weight": (self.hidden,),
            "self_attn.q_proj.weight": (q_out, self.hidden),
            "self_attn.k_proj.weight": (kv_out, self.hidden),
            "self_attn.v_proj.weight": (kv_out, self.hidden),
            "self_attn.o_proj.weight": (self.hidden, q_out),
            "post_attention_layernorm.weight": (self.hidden,),
            "mlp.gate_proj.weight": (self.intermediate, self.hidden),
            "mlp.up_proj.weight": (self.intermediate, self.hidden),
            "mlp.down_proj.weight": (self.hidden, self.intermediate),
        }
        return tuple(TensorSpec(prefix + suffix, dtype, shape) for suffix, shape in shapes.items())

    @property
    def param_count(self) -> int:
        return sum(spec.numel for spec in self.specs())

    def nbytes(self, dtype: str = "BF16") -> int:
        """Bytes of tensor data in ``dtype`` (a checkpoint file adds only its header). From one layer's tensors
        (every layer is alike), so a checkpoint too big for the disk is refused before its tensors are listed."""
        outer = sum(spec.nbytes for spec in self._outer_specs(dtype))
        return outer + self.layers * sum(spec.nbytes for spec in self.layer_specs(0, dtype))


MODELS: Mapping[str, ModelConfig] = {
    config.name: config
    for config in (
        ModelConfig("tiny", 2, 64, 128, 4, 2, 16, 256, tied_embeddings=False),
        ModelConfig("llama-3.2-1b", 16, 2048, 8192, 32, 8, 64, 128256, tied_embeddings=True),
        ModelConfig("llama-3-8b", 32, 4096, 14336, 32, 8, 128, 128256, tied_embeddings=False),
    )
}


def get_model(name: str | ModelConfig) -> ModelConfig:
    """A model by name (or the config itself); an unknown name lists the known ones."""
    if isinstance(name, ModelConfig):
        return name
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; available models: {', '.join(MODELS)}")
    return MODELS[name]


def layer_of(name: str) -> int | None:
    """The decoder layer a tensor belongs to, or None for embeddings, final norm and head."""
    match = _LAYER.match(name)
    return int(match.group(1)) if match else None


def node_keys(config: ModelConfig, start: int, end: int, n_layers: int | None = None) -> tuple[str, ...]:
    """The tensors an exo shard node holding layers ``start..end`` (inclusive) must load.

    The first node (start == 0) also loads the embedding; the last (end == n_layers - 1) loads the final
    norm and the output head, which is the embedding itself when the model ties them.
    """
    n_layers = config.layers if n_layers is None else n_layers
    if n_layers != config.layers:
        raise ModelError(f"n_layers={n_layers} but model {config.name!r} has {config.layers} layers")
    if not 0 <= start <= end < n_layers:
        raise ModelError(f"layer range [{start}, {end}] is not inside [0, {n_layers - 1}]")
    wanted: set[str] = set()
    if start == 0:
        wanted.add(EMBED)
    if end == n_layers - 1:
        wanted.update((NORM, EMBED if config.tied_embeddings else LM_HEAD))
    keys = []
    for spec in config.specs():
        layer = layer_of(spec.name)
        if spec.name in wanted or (layer is not None and start <= layer <= end):
            keys.append(spec.name)
    return tuple(keys)


def split_layers(n_layers: int, nodes: int) -> tuple[tuple[int, int], ...]:
    """Inclusive layer ranges for ``nodes`` nodes, as even as possible (earlier nodes get the extra layer)."""
    if not 1 <= nodes <= n_layers:
        raise ModelError(f"cannot split {n_layers} layers over {nodes} nodes")
    base, extra = divmod(n_layers, nodes)
    ranges = []
    start = 0
    for i in range(nodes):
        size = base + (1 if i < extra else 0)
        ranges.append((start, start + size - 1))
        start += size
    return tuple(ranges)


def _shrink(size: float, scale: float) -> int:
    return max(1, round(size * scale))
