"""Family registry: one module per architecture family, claimed by HF `architectures` strings.

A family maps a checkpoint's config to a DecoderSpec and its weight names to the
decoder's, and nothing else.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from mobilekit.errors import CheckpointError, UnknownNameError, UnsupportedArchitectureError
from mobilekit.modeling.spec import DecoderSpec

# Registry key = module stem. Kept as a literal list so nothing heavy is imported until asked.
FAMILY_MODULES = ("llama", "qwen2", "phi3", "phi", "gemma2", "gemma3", "gpt_neox", "gpt2", "stablelm",
                  "minicpm", "openelm", "open_lm")


@dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]
    spec_from_config: Callable[[Mapping], DecoderSpec]
    convert_weights: Callable[[Mapping[str, torch.Tensor], DecoderSpec], dict[str, torch.Tensor]]
    # Builds the transformers reference model from a config dict, or None when
    # transformers has no implementation of the family.
    hf_reference_class: str | None = None
    # model_type values claimed when a config.json has no `architectures` (Cerebras-GPT-2.7B)
    model_types: tuple[str, ...] = ()
    # Families transformers lacks: {weight name: shape} exactly as the checkpoints store them,
    # from a config.json (what mobilekit.tiny randomizes, since transformers cannot build them).
    checkpoint_shapes: Callable[[Mapping], dict[str, tuple[int, ...]]] | None = None
    # Said when a checkpoint folder has no tokenizer (OpenELM's repos ship none).
    tokenizer_hint: str = ""


def names() -> list[str]:
    return list(FAMILY_MODULES)


def get(name: str) -> Family:
    if name not in FAMILY_MODULES:
        raise UnknownNameError("family", name, names())
    return importlib.import_module(f"mobilekit.families.{name}").FAMILY


def supported_architectures() -> dict[str, str]:
    return {arch: fam.name for fam in map(get, names()) for arch in fam.architectures}


def for_architecture(architectures: list[str] | None, model_type: str | None = None) -> Family:
    table = supported_architectures()
    for arch in architectures or []:
        if arch in table:
            return get(table[arch])
    if not architectures and model_type:
        for family in map(get, names()):
            if model_type in family.model_types:
                return family
    raise UnsupportedArchitectureError(
        f"No mobilekit family supports architectures {architectures}. "
        f"Supported: {', '.join(sorted(table))}"
    )


def hf_config(config: Mapping) -> dict:
    """The config as transformers itself reads it: legacy keys (rope_theta, rotary_pct,
    rope_local_base_freq, missing layer_types ...) folded into the current ones
    (ARCHITECTURES.md §0.5). Reads no weights and runs no remote code."""
    from transformers import AutoConfig

    values = {k: v for k, v in config.items() if k not in ("model_type", "transformers_version")}
    try:
        return AutoConfig.for_model(config["model_type"], **values).to_dict()
    except KeyError:
        raise
    except Exception as e:  # transformers' strict config dataclasses: a value of the wrong type
        detail = (str(e).strip().splitlines() or [type(e).__name__])[-1].strip()[:300]
        raise CheckpointError(f"transformers' {config['model_type']!r} config refuses a value ({detail})") from e


def core_shape(config: Mapping) -> dict:
    """The DecoderSpec sizes every transformers-style config spells the same way (GPT-2's
    n_embd/n_head keys are its own). head_dim defaults to hidden/heads, kv heads to heads."""
    heads = config["num_attention_heads"]
    return dict(
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        intermediate_size=config["intermediate_size"],
        max_position_embeddings=config.get("max_position_embeddings", 2048),
    )


def layer_norm_rotary_fields(config: Mapping, family: str) -> dict:
    """The DecoderSpec fields GPT-NeoX, Phi-2 and StableLM read alike from a normalized
    config: sizes, LayerNorm eps, activation, plain rotary base and partial rotary width."""
    params = rope_parameters(config)
    require_default_rope(params, family)
    shape = core_shape(config)
    return dict(
        **shape,
        norm="layer",
        norm_eps=config["layer_norm_eps"],
        activation=activation(config["hidden_act"]),
        rope_theta=float(params.get("rope_theta", 10000.0)),
        rotary_dim=rotary_dim(config, shape["head_dim"]),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


def rope_parameters(config: Mapping, layer_type: str | None = None) -> dict:
    """rope_parameters of a normalized config (per layer type where the family has them)."""
    params = config.get("rope_parameters") or {}
    if layer_type is not None and layer_type in params:
        params = params[layer_type]
    return params


def rotary_dim(config: Mapping, head_dim: int) -> int:
    """Rotated lanes per head: int(head_dim * partial_rotary_factor), as transformers does."""
    return int(head_dim * float(rope_parameters(config).get("partial_rotary_factor", 1.0)))


def require_default_rope(params: Mapping, family: str) -> None:
    kind = params.get("rope_type", "default")
    if kind != "default":
        raise CheckpointError(f"{family} checkpoints with rope scaling {kind!r} are not supported (supported: none)")


HF_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
                  "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}


def activation(name: str) -> str:
    if name not in HF_ACTIVATIONS:
        raise CheckpointError(f"activation {name!r} is not supported (supported: {', '.join(HF_ACTIVATIONS)})")
    return HF_ACTIVATIONS[name]


_LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


def layer_index(name: str) -> int:
    """The decoder layer a checkpoint weight name belongs to (`...layers.{i}....`)."""
    m = _LAYER_INDEX.search(name)
    if m is None:
        raise CheckpointError(f"weight {name!r} names no layer")
    return int(m.group(1))


def rename(name: str, prefixes: tuple[str, ...], renames: Mapping[str, str]) -> str:
    """Strip the first matching prefix, then replace each dotted component in `renames`."""
    for prefix in prefixes:
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    return ".".join(renames.get(part, part) for part in name.split("."))
