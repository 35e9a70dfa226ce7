"""Gemma 2 family: Gemma2ForCausalLM (ARCHITECTURES.md §5).

Four (1 + w) RMSNorms per layer (sandwich norms), sqrt(d) embedding scale, GeGLU-tanh,
attention and final logit softcaps, query_pre_attn_scalar, sliding window on alternate
layers. The (1 + w) offset is folded into the stored weight here (in fp32), so the
decoder's plain RMSNorm computes Gemma's norm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from mobilekit.errors import CheckpointError
from mobilekit.families import (Family, activation, core_shape, hf_config, register, rename, rope_parameters,
                                require_default_rope)
from mobilekit.families._tiny import TINY_SHAPE
from mobilekit.modeling.spec import DecoderSpec

if TYPE_CHECKING:
    import torch

LAYER_TYPES = {"full_attention": "full", "sliding_attention": "sliding"}


def gemma_spec(config: Mapping, family: str, **extra) -> DecoderSpec:
    """The spec fields Gemma 2 and Gemma 3 share; `config` is normalized (hf_config)."""
    unknown = set(config["layer_types"]) - set(LAYER_TYPES)
    if unknown:
        raise CheckpointError(f"{family} layer types {sorted(unknown)} are not supported")
    if config.get("attention_bias"):
        raise CheckpointError(f"{family} checkpoints with attention_bias are not supported")
    return DecoderSpec(
        **core_shape(config),
        norm_eps=config["rms_norm_eps"],
        activation=activation(config.get("hidden_activation") or config.get("hidden_act") or "gelu_pytorch_tanh"),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", True)),
        sandwich_norms=True,
        embedding_scale=config["hidden_size"] ** 0.5,
        query_pre_attn_scalar=float(config["query_pre_attn_scalar"]),
        attention_softcap=config.get("attn_logit_softcapping"),
        final_softcap=config.get("final_logit_softcapping"),
        sliding_window=config.get("sliding_window"),
        layer_types=tuple(LAYER_TYPES[t] for t in config["layer_types"]),
        **extra,
    )


def spec_from_config(config: Mapping) -> DecoderSpec:
    config = hf_config(config)
    params = rope_parameters(config)
    require_default_rope(params, "Gemma 2")
    return gemma_spec(config, "Gemma 2", rope_theta=float(params.get("rope_theta", 10000.0)))


RENAMES = {
    "self_attn": "attention",
    "input_layernorm": "input_norm",
    "post_attention_layernorm": "attention_output_norm",
    "pre_feedforward_layernorm": "post_attention_norm",
    "post_feedforward_layernorm": "mlp_output_norm",
}


def convert_weights(state: Mapping[str, torch.Tensor], spec: DecoderSpec) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in state.items():
        if name == "lm_head.weight" and spec.tie_word_embeddings:
            continue
        new = rename(name, ("model.",), RENAMES)
        if "norm" in new.rsplit(".", 2)[-2]:
            tensor = tensor.float() + 1.0  # Gemma's (1 + w), in fp32 as Gemma computes it
        out[new] = tensor
    return out


# Sandwich (1 + w) norms, embedding scale, softcaps small enough to bite on random weights,
# query_pre_attn_scalar != head_dim, a 16-token window on layers 0 and 2.
TINY_CONFIG = {
    **TINY_SHAPE, "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2",
    "num_key_value_heads": 2, "head_dim": 16, "query_pre_attn_scalar": 24, "sliding_window": 16,
    "attn_logit_softcapping": 3.0, "final_logit_softcapping": 5.0, "rms_norm_eps": 1e-6,
    "hidden_activation": "gelu_pytorch_tanh",
}

register(Family(
    name="gemma2",
    architectures=("Gemma2ForCausalLM",),
    spec_from_config=spec_from_config,
    convert_weights=convert_weights,
    tiny_config=TINY_CONFIG,
    hf_reference_class="AutoModelForCausalLM",
    model_types=("gemma2",),
    gguf_architectures={"gemma2": "Gemma2ForCausalLM"},
))
