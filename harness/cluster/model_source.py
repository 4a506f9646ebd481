"""``--model``: a built-in model name, or a Hugging Face ``config.json`` of a Llama-style decoder.

Llama, Mistral and Qwen2 configs name their shapes the same way (``hidden_size``, ``intermediate_size``,
``num_attention_heads``, ``num_key_value_heads``, ``num_hidden_layers``, ``vocab_size``, ``tie_word_embeddings``,
``torch_dtype``). ``head_dim`` is optional (Mistral states it; otherwise hidden / heads), as is
``num_key_value_heads`` (absent in older Llama configs: no grouped-query attention, so one KV head per head).
Qwen2's q/k/v biases are not modelled: they are a few KiB per layer and change no memory verdict.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mali_hil.harness.checkpoints import ModelConfig, get_model
from mali_hil.harness.checkpoints.faults import ModelError

REQUIRED = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "vocab_size")
#: config.json ``torch_dtype`` -> the safetensors dtype a checkpoint of it stores.
DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


@dataclass(frozen=True)
class ModelSource:
    """A model's shape and the dtype its published checkpoint stores."""

    config: ModelConfig
    dtype: str = "BF16"
    origin: str = "built-in"


def resolve_model(text: str) -> ModelSource:
    """A built-in name, or a path to a config.json (or a folder holding one)."""
    path = Path(text)
    if path.is_dir():
        path = path / "config.json"
    if path.suffix == ".json" or path.is_file():
        return from_hf_config(path)
    return ModelSource(get_model(text))


def from_hf_config(path: Path) -> ModelSource:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"no model config at {path}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"{path} is not a readable JSON config ({exc})") from None
    if not isinstance(doc, dict):
        raise ModelError(f"{path} is not a Hugging Face config (a JSON object)")
    try:
        config = config_from_dict(doc, name=path.parent.name or path.stem)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    return ModelSource(config, _dtype(doc, path), str(path))


def config_from_dict(doc: dict[str, Any], name: str = "config") -> ModelConfig:
    """The decoder shape of a config.json document; a field we need and cannot find is named in the error."""
    architectures = doc.get("architectures") or []
    others = [a for a in architectures if a not in ARCHITECTURES]
    if architectures and others:
        raise ModelError(
            f"config {name!r}: architecture {others[0]} is not a Llama-style decoder"
            f" (mapped: {', '.join(ARCHITECTURES)})"
        )
    missing = [key for key in REQUIRED if key not in doc]
    if missing:
        raise ModelError(
            f"config {name!r} has no {missing[0]!r}: cannot map it to a Llama-style decoder"
            f" (needs {', '.join(REQUIRED)})"
        )
    values = {key: doc[key] for key in REQUIRED}
    values["num_key_value_heads"] = doc.get("num_key_value_heads", doc["num_attention_heads"])
    for key, value in values.items():
        if type(value) is not int or value < 1:
            raise ModelError(f"config {name!r}: {key!r} must be a positive integer, not {value!r}")
    heads, hidden = values["num_attention_heads"], values["hidden_size"]
    head_dim = doc.get("head_dim") or hidden // heads
    if type(head_dim) is not int or head_dim < 1:
        raise ModelError(f"config {name!r}: 'head_dim' must be a positive integer, not {head_dim!r}")
    return ModelConfig(
        name=str(doc.get("_name_or_path") or name),
        layers=values["num_hidden_layers"],
        hidden=hidden,
        intermediate=values["intermediate_size"],
        heads=heads,
        kv_heads=values["num_key_value_heads"],
        head_dim=head_dim,
        vocab=values["vocab_size"],
        tied_embeddings=bool(doc.get("tie_word_embeddings", False)),
    )


def _dtype(doc: dict[str, Any], path: Path) -> str:
    value = doc.get("torch_dtype", doc.get("dtype", "bfloat16"))
    if value not in DTYPES:
        raise ModelError(f"{path}: torch_dtype {value!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[value]
