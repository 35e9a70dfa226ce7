"""GPT-NeoX family (Pythia): GPTNeoXForCausalLM (ARCHITECTURES.md §7).

LayerNorms with bias, a fused query_key_value projection interleaved per head, partial
rotary (rotary_pct), parallel residual with two norms, plain exact-gelu MLP, biases on
every projection, untied head (embed_out, renamed lm_head by transformers 5).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from mobilekit.families import Family, hf_config, layer_norm_rotary_fields, register, rename
from mobilekit.families._tiny import TINY_SHAPE
from mobilekit.modeling.spec import DecoderSpec

if TYPE_CHECKING:
    import torch


def spec_from_config(config: Mapping) -> DecoderSpec:
    config = hf_config(config)
    bias = bool(config.get("attention_bias", True))
    return DecoderSpec(
        **layer_norm_rotary_fields(config, "GPT-NeoX"),
        qkv_bias=bias,
        output_bias=bias,
        mlp_bias=True,
        mlp="plain",
        residual="parallel" if config.get("use_parallel_residual", True) else "sequential",
    )


_RENAMES = {
    "embed_in": "embed_tokens",
    "input_layernorm": "input_norm",
    "post_attention_layernorm": "post_attention_norm",
    "dense": "o_proj",
    "dense_h_to_4h": "fc_in",
    "dense_4h_to_h": "fc_out",
    "final_layer_norm": "norm",
    "embed_out": "lm_head",
}
# Non-parameter buffers some Pythia files carry (causal masks, rotary frequencies).
_IGNORED = ("attention.bias", "attention.masked_bias", "rotary_emb.inv_freq")


def convert_weights(state: Mapping[str, torch.Tensor], spec: DecoderSpec) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in state.items():
        if name.endswith(_IGNORED) or (name.startswith(("lm_head.", "embed_out.")) and spec.tie_word_embeddings):
            continue
        new = rename(name, ("gpt_neox.",), _RENAMES)
        if ".query_key_value." in new:
            # rows are [head, (q|k|v), head_dim]: per-head interleaved, not [Q; K; V]
            kind = new.rsplit(".", 1)[-1]
            per_head = tensor.reshape(spec.num_heads, 3, spec.head_dim, *tensor.shape[1:])
            prefix = new.split("query_key_value")[0]
            for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                out[f"{prefix}{proj}.{kind}"] = per_head[:, j].reshape(spec.num_heads * spec.head_dim, *tensor.shape[1:])
            continue
        out[new] = tensor
    return out


# Interleaved fused qkv, 25% rotary (4 of 16 lanes), parallel residual, exact gelu.
TINY_CONFIG = {
    **TINY_SHAPE, "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox",
    "hidden_act": "gelu", "rotary_pct": 0.25, "rotary_emb_base": 10000, "use_parallel_residual": True,
    "layer_norm_eps": 1e-5, "tie_word_embeddings": False,
}

register(Family(
    name="gpt_neox",
    architectures=("GPTNeoXForCausalLM",),
    spec_from_config=spec_from_config,
    convert_weights=convert_weights,
    tiny_config=TINY_CONFIG,
    hf_reference_class="AutoModelForCausalLM",
    model_types=("gpt_neox",),
    gguf_architectures={"gptneox": "GPTNeoXForCausalLM"},
))
