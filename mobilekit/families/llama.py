"""Llama family: LlamaForCausalLM and MistralForCausalLM (ARCHITECTURES.md §1-3)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from mobilekit.errors import CheckpointError
from mobilekit.families import Family, core_shape, register
from mobilekit.modeling.spec import DecoderSpec, Llama3RopeScaling

if TYPE_CHECKING:
    import torch


def _rope_scaling(config: Mapping) -> Llama3RopeScaling | None:
    # transformers 5 folds rope_scaling into rope_parameters; hub config.json files still
    # carry the old key. Accept both (ARCHITECTURES.md §0.5).
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return None
    if kind == "llama3":
        return Llama3RopeScaling(
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(params["original_max_position_embeddings"]),
        )
    raise CheckpointError(
        f"rope scaling type {kind!r} is not supported for Llama-family checkpoints "
        "(supported: none, llama3)"
    )


def _rope_theta(config: Mapping) -> float:
    params = config.get("rope_parameters") or {}
    return float(params.get("rope_theta", config.get("rope_theta", 10000.0)))


def spec_from_config(config: Mapping) -> DecoderSpec:
    return DecoderSpec(
        **core_shape(config),
        norm_eps=config.get("rms_norm_eps", 1e-6),
        activation={"silu": "silu", "swish": "silu"}.get(config.get("hidden_act", "silu"), config.get("hidden_act")),
        rope_theta=_rope_theta(config),
        rope_scaling=_rope_scaling(config),
        qkv_bias=bool(config.get("attention_bias", False)),
        output_bias=bool(config.get("attention_bias", False)),
        mlp_bias=bool(config.get("mlp_bias", False)),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        sliding_window=config.get("sliding_window"),
    )


_LAYER_RENAMES = {
    "input_layernorm": "input_norm",
    "post_attention_layernorm": "post_attention_norm",
    "self_attn": "attention",
}


def convert_weights(state: Mapping[str, torch.Tensor], spec: DecoderSpec) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in state.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        if name == "lm_head.weight" and spec.tie_word_embeddings:
            continue
        new = name.removeprefix("model.")
        for old, repl in _LAYER_RENAMES.items():
            new = new.replace(f".{old}.", f".{repl}.")
        out[new] = tensor
    return out


TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
}

register(Family(
    name="llama",
    architectures=("LlamaForCausalLM", "MistralForCausalLM"),
    spec_from_config=spec_from_config,
    convert_weights=convert_weights,
    tiny_config=TINY_CONFIG,
    hf_reference_class="AutoModelForCausalLM",
    gguf_architectures={"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"},
))
