"""Phi family (Phi-2): PhiForCausalLM (ARCHITECTURES.md §10).

One LayerNorm feeding attention and MLP in parallel, partial rotary, biases on every
projection including the lm head, plain gelu_new MLP.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from mobilekit.errors import CheckpointError
from mobilekit.families import Family, hf_config, layer_norm_rotary_fields, register, rename
from mobilekit.families._tiny import TINY_SHAPE
from mobilekit.modeling.spec import DecoderSpec

if TYPE_CHECKING:
    import torch


def spec_from_config(config: Mapping) -> DecoderSpec:
    config = hf_config(config)
    if config.get("qk_layernorm"):
        raise CheckpointError("Phi checkpoints with qk_layernorm are not supported")
    return DecoderSpec(
        **layer_norm_rotary_fields(config, "Phi"),
        qkv_bias=True,
        output_bias=True,
        mlp_bias=True,
        lm_head_bias=True,
        mlp="plain",
        residual="parallel_shared_norm",
    )


_RENAMES = {
    "self_attn": "attention",
    "input_layernorm": "input_norm",
    "dense": "o_proj",
    "fc1": "fc_in",
    "fc2": "fc_out",
    "final_layernorm": "norm",
}


def convert_weights(state: Mapping[str, torch.Tensor], spec: DecoderSpec) -> dict[str, torch.Tensor]:
    return {rename(name, ("model.",), _RENAMES): tensor for name, tensor in state.items()
            if not (name == "lm_head.weight" and spec.tie_word_embeddings)}


# Phi-2: one shared LayerNorm, parallel attention + MLP, 50% rotary, lm_head bias, gelu_new.
TINY_CONFIG = {
    **TINY_SHAPE, "architectures": ["PhiForCausalLM"], "model_type": "phi", "num_key_value_heads": 4,
    "hidden_act": "gelu_new", "partial_rotary_factor": 0.5, "layer_norm_eps": 1e-5, "tie_word_embeddings": False,
}

register(Family(
    name="phi",
    architectures=("PhiForCausalLM",),
    spec_from_config=spec_from_config,
    convert_weights=convert_weights,
    tiny_config=TINY_CONFIG,
    hf_reference_class="AutoModelForCausalLM",
    model_types=("phi",),
))
