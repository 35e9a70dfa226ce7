"""StableLM family: StableLmForCausalLM (ARCHITECTURES.md §11).

Llama's layout and weight names with LayerNorms (weight and bias), partial rotary and
optional q/k/v biases; use_parallel_residual shares one norm between attention and MLP.
"""

from __future__ import annotations

from typing import Mapping

import torch

from mobilekit.errors import CheckpointError
from mobilekit.families import Family, hf_config, layer_norm_rotary_fields, rename
from mobilekit.modeling.spec import DecoderSpec


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


FAMILY = Family(
    name="stablelm",
    architectures=("StableLmForCausalLM",),
    spec_from_config=spec_from_config,
    convert_weights=convert_weights,
    hf_reference_class="AutoModelForCausalLM",
    model_types=("stablelm",),
)
