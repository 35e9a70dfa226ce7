"""OLMo 2 family: Olmo2ForCausalLM (AI2; transformers models/olmo2/modeling_olmo2.py).

A Llama whose norms sit after the sub-layers, not before: h += norm(attn(h)); h += norm(mlp(h))
(no pre-norms, the decoder's output norms only), and whose q and k are RMS-normed over all
heads' lanes at once, before the head split (qk_norm_width "full"). Untied head.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Mapping

from mobilekit.families import Family, llama, register, rename
from mobilekit.modeling.spec import DecoderSpec

if TYPE_CHECKING:
    import torch


def spec_from_config(config: Mapping) -> DecoderSpec:
    base = llama.spec_from_config({**config, "sliding_window": None})
    return dataclasses.replace(base, pre_norms=False, sandwich_norms=True, qk_norm=True, qk_norm_width="full")


# transformers' names -> the decoder's: OLMo 2's post_attention_layernorm normalizes the
# attention's output (Gemma's name for it), not the MLP's input as in Llama.
_RENAMES = {"self_attn": "attention", "post_attention_layernorm": "attention_output_norm",
            "post_feedforward_layernorm": "mlp_output_norm"}


def convert_weights(state: Mapping[str, torch.Tensor], spec: DecoderSpec) -> dict[str, torch.Tensor]:
    return {rename(name, ("model.",), _RENAMES): tensor for name, tensor in state.items()
            if not (name == "lm_head.weight" and spec.tie_word_embeddings)}


# Post-sublayer norms, full-width q/k norms, GQA, untied head.
TINY_CONFIG = {
    **llama.TINY_CONFIG,
    "architectures": ["Olmo2ForCausalLM"],
    "model_type": "olmo2",
    "num_hidden_layers": 3,
    "rms_norm_eps": 1e-6,
    "rope_theta": 500000.0,
    "pad_token_id": 0,
}

register(Family(
    name="olmo2",
    architectures=("Olmo2ForCausalLM",),
    spec_from_config=spec_from_config,
    convert_weights=convert_weights,
    tiny_config=TINY_CONFIG,
    hf_reference_class="AutoModelForCausalLM",
))
