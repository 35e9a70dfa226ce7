"""StableLM family: StableLmForCausalLM (ARCHITECTURES.md §11).

Llama's layout and weight names with LayerNorms (weight and bias), partial rotary and
optional q/k/v biases; use_parallel_residual shares one norm between attention and MLP.
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
    if config.get("model_type") == "stablelm_epoch":
        raise CheckpointError("this is a pre-transformers StableLM revision (stablelm_epoch, remote code); "
                              "use a revision whose config.json says model_type \"stablelm\"")
    config = hf_config(config)
    if config.get("qk_layernorm"):
        raise CheckpointError("StableLM checkpoints with qk_layernorm (per-head norms) are not supported")
    return DecoderSpec(
        **layer_norm_rotary_fields(config, "StableLM"),
        qkv_bias=bool(config.get("use_qkv_bias", False)),
        residual="parallel_shared_norm" if config.get("use_parallel_residual") else "sequential",
    )


_RENAMES = {"self_attn": "attention", "input_layernorm": "input_norm", "post_attention_layernorm": "post_attention_norm"}


def convert_weights(state: Mapping[str, torch.Tensor], spec: DecoderSpec) -> dict[str, torch.Tensor]:
    return {rename(name, ("model.",), _RENAMES): tensor for name, tensor in state.items()
            if not name.endswith("rotary_emb.inv_freq") and not (name == "lm_head.weight" and spec.tie_word_embeddings)}


# LayerNorms with bias, 25% rotary, q/k/v biases on, gated silu MLP.
TINY_CONFIG = {
    **TINY_SHAPE, "architectures": ["StableLmForCausalLM"], "model_type": "stablelm", "num_key_value_heads": 2,
    "hidden_act": "silu", "partial_rotary_factor": 0.25, "use_qkv_bias": True, "layer_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}

register(Family(
    name="stablelm",
    architectures=("StableLmForCausalLM",),
    spec_from_config=spec_from_config,
    convert_weights=convert_weights,
    tiny_config=TINY_CONFIG,
    hf_reference_class="AutoModelForCausalLM",
    model_types=("stablelm",),
    gguf_architectures={"stablelm": "StableLmForCausalLM"},
))
