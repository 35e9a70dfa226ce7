"""LFM2 / LFM2.5 family: Lfm2ForCausalLM (Liquid AI's hybrid of short convolutions and attention).

Each layer is either a gated short convolution ("conv": the decoder's ShortConv, whose state
is its last conv_L_cache - 1 inputs) or grouped-query attention with RMSNorms on q and k
over head_dim ("full_attention"). Both are followed by a SwiGLU MLP; pre-norms, a final
norm (transformers calls it embedding_norm, but it runs after the last layer) and a tied
head. The reference is transformers' models/lfm2/modeling_lfm2.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from mobilekit.errors import CheckpointError
from mobilekit.families import Family, core_shape, hf_config, register, rename, require_default_rope, rope_parameters
from mobilekit.families._tiny import TINY_SHAPE
from mobilekit.modeling.spec import DecoderSpec

if TYPE_CHECKING:
    import torch

_LAYER_TYPES = {"conv": "conv", "full_attention": "full"}


def mlp_width(config: Mapping) -> int:
    """The SwiGLU width transformers' Lfm2MLP builds: with block_auto_adjust_ff_dim, 2/3 of
    intermediate_size (config.json's block_ff_dim), times block_ffn_dim_multiplier, rounded up
    to block_multiple_of. LFM2-1.2B: 12288 -> 8192."""
    width = config["intermediate_size"]
    if not config.get("block_auto_adjust_ff_dim", True):
        return width
    width = int(2 * width / 3)
    multiplier = config.get("block_ffn_dim_multiplier")
    if multiplier is not None:
        step = config.get("block_multiple_of", 256)
        width = step * ((int(multiplier * width) + step - 1) // step)
    return width


def spec_from_config(config: Mapping) -> DecoderSpec:
    # hf_config folds block_ff_dim into intermediate_size, tie_embedding into
    # tie_word_embeddings and full_attn_idxs into layer_types, as Lfm2Config does.
    config = hf_config(config)
    params = rope_parameters(config)
    require_default_rope(params, "LFM2")
    unknown = sorted(set(config["layer_types"]) - set(_LAYER_TYPES))
    if unknown:
        raise CheckpointError(f"LFM2 layer_types {unknown} are not supported (supported: {', '.join(_LAYER_TYPES)})")
    return DecoderSpec(
        **{**core_shape(config), "intermediate_size": mlp_width(config)},
        norm_eps=float(config["norm_eps"]),
        rope_theta=float(params.get("rope_theta", 1_000_000.0)),
        qk_norm=True,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", True)),
        layer_types=tuple(_LAYER_TYPES[t] for t in config["layer_types"]),
        conv_kernel=int(config["conv_L_cache"]),
        conv_bias=bool(config.get("conv_bias", False)),
    )


# Component renames, transformers' names -> the decoder's (the attention's out_proj is
# renamed below by path: the conv block has an out_proj of its own that keeps its name).
_RENAMES = {
    "operator_norm": "input_norm", "ffn_norm": "post_attention_norm", "self_attn": "attention",
    "q_layernorm": "q_norm", "k_layernorm": "k_norm", "feed_forward": "mlp",
    "w1": "gate_proj", "w3": "up_proj", "w2": "down_proj", "embedding_norm": "norm",
}


def convert_weights(state: Mapping[str, torch.Tensor], spec: DecoderSpec) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in state.items():
        if name == "lm_head.weight" and spec.tie_word_embeddings:
            continue
        new = rename(name, ("model.",), _RENAMES).replace(".attention.out_proj.", ".attention.o_proj.")
        if new.endswith(".conv.conv.weight"):  # nn.Conv1d's depthwise [C, 1, k] -> the decoder's [C, k]
            tensor = tensor.squeeze(1)
        out[new] = tensor
    return out


# conv, attention, conv: both state kinds, the conv between attention and the head; the
# auto-adjusted MLP width (128 -> 85 -> 96 with block_multiple_of 32); conv biases on.
TINY_CONFIG = {
    **TINY_SHAPE, "architectures": ["Lfm2ForCausalLM"], "model_type": "lfm2",
    "num_key_value_heads": 2, "norm_eps": 1e-5, "conv_L_cache": 3, "conv_bias": True,
    "block_auto_adjust_ff_dim": True, "block_ffn_dim_multiplier": 1.0, "block_multiple_of": 32,
    "layer_types": ["conv", "full_attention", "conv"], "tie_word_embeddings": True,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
}


def shrink_to_tiny(config: dict) -> dict:
    """A recipe's LFM2 config at tiny size: the layer pattern up to one layer past its first
    attention layer (LFM2's starts conv, conv, attention, conv), the MLP width rule kept."""
    types = config.get("layer_types") or [
        "full_attention" if i in config["full_attn_idxs"] else "conv" for i in range(config["num_hidden_layers"])]
    first_attention = types.index("full_attention") if "full_attention" in types else 1
    types = types[:max(3, first_attention + 2)]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    return {
        **{k: v for k, v in config.items() if k not in ("full_attn_idxs", "block_ff_dim", "head_dim")},
        "hidden_size": 64, "intermediate_size": 192, "num_attention_heads": 4,
        "num_key_value_heads": max(1, 4 * kv_heads // heads), "max_position_embeddings": 256,
        "num_hidden_layers": len(types), "layer_types": types, "block_multiple_of": 32,
    }


register(Family(
    name="lfm2",
    architectures=("Lfm2ForCausalLM",),
    spec_from_config=spec_from_config,
    convert_weights=convert_weights,
    tiny_config=TINY_CONFIG,
    shrink_to_tiny=shrink_to_tiny,
    hf_reference_class="AutoModelForCausalLM",
    gguf_architectures={"lfm2": "Lfm2ForCausalLM"},
))
