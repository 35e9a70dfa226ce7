"""Qwen3.5 family, text only: Qwen3_5ForCausalLM, and the language model of
Qwen3_5ForConditionalGeneration (how the Hub's Qwen3.5 checkpoints are published: its vision
tower and multi-token-prediction head are left out).

Three Gated DeltaNet layers ("linear_attention", the decoder's "delta" layers: a short conv
over q/k/v, then a recurrent matrix state per value head) per gated attention layer
("full_attention": Qwen3's q/k RMSNorms plus an output gate, sigmoid(gate) * attention, the
gate's rows interleaved per head with q's in q_proj). Partial rotary (a quarter of
head_dim); every RMSNorm outside the DeltaNet scales by (1 + w), stored here as the
effective scale, while the DeltaNet's gated norm scales by w. The reference is
transformers' models/qwen3_5/modeling_qwen3_5.py.

Positions: Qwen3.5 uses multimodal rotary (mrope_section), whose three sections rotate by
the temporal, height and width position of a vision token. For text every token's three
positions are equal (ref: Qwen3_5TextRotaryEmbedding.forward expands one position_ids to
all three), so the sections coincide with plain rotary, which is what the decoder runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from mobilekit.errors import CheckpointError
from mobilekit.families import (Family, activation, core_shape, hf_config, register, rename, require_default_rope,
                                rope_parameters, rotary_dim)
from mobilekit.families._tiny import TINY_SHAPE
from mobilekit.modeling.spec import DecoderSpec

if TYPE_CHECKING:
    import torch

_LAYER_TYPES = {"linear_attention": "delta", "full_attention": "full"}


def text_config(config: Mapping) -> dict:
    """The language model's config: config.json's text_config for the multimodal checkpoints
    (the published ones), the config itself for Qwen3_5ForCausalLM; normalized as
    transformers reads it (layer_types from full_attention_interval when absent)."""
    text = dict(config.get("text_config") or config)
    text["model_type"] = "qwen3_5_text"
    if "tie_word_embeddings" in config and "tie_word_embeddings" not in text:
        text["tie_word_embeddings"] = config["tie_word_embeddings"]
    return hf_config(text)


def spec_from_config(config: Mapping) -> DecoderSpec:
    text = text_config(config)
    params = rope_parameters(text)
    require_default_rope(params, "Qwen3.5")
    unknown = sorted(set(text["layer_types"]) - set(_LAYER_TYPES))
    if unknown:
        raise CheckpointError(f"Qwen3.5 layer_types {unknown} are not supported (supported: {', '.join(_LAYER_TYPES)})")
    shape = core_shape(text)
    return DecoderSpec(
        **shape,
        norm_eps=float(text["rms_norm_eps"]),
        activation=activation(text["hidden_act"]),
        rope_theta=float(params.get("rope_theta", 10_000_000.0)),
        rotary_dim=rotary_dim(text, shape["head_dim"]),
        qkv_bias=bool(text.get("attention_bias", False)),
        output_bias=bool(text.get("attention_bias", False)),
        qk_norm=True,
        attention_output_gate=True,
        tie_word_embeddings=bool(text.get("tie_word_embeddings", False)),
        layer_types=tuple(_LAYER_TYPES[t] for t in text["layer_types"]),
        conv_kernel=int(text["linear_conv_kernel_dim"]),
        delta_key_heads=int(text["linear_num_key_heads"]),
        delta_key_dim=int(text["linear_key_head_dim"]),
        delta_value_heads=int(text["linear_num_value_heads"]),
        delta_value_dim=int(text["linear_value_head_dim"]),
    )


_RENAMES = {
    "self_attn": "attention", "linear_attn": "delta", "conv1d": "conv",
    "input_layernorm": "input_norm", "post_attention_layernorm": "post_attention_norm",
}
# (1 + w) norms: the layers' two, q_norm / k_norm and the final norm (not the DeltaNet's).
_OFFSET_NORMS = ("input_norm.weight", "post_attention_norm.weight", "q_norm.weight", "k_norm.weight")
# Weights of the multimodal checkpoints that are not the language model.
_NOT_TEXT = ("model.visual.", "mtp.")


def convert_weights(state: Mapping[str, torch.Tensor], spec: DecoderSpec) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in state.items():
        if name.startswith(_NOT_TEXT) or (name == "lm_head.weight" and spec.tie_word_embeddings):
            continue
        new = rename(name, ("model.language_model.", "model."), _RENAMES)
        if new.endswith(_OFFSET_NORMS) or new == "norm.weight":
            tensor = tensor.float() + 1.0  # (1 + w), in fp32 as Qwen3_5RMSNorm computes it
        if new.endswith(".delta.conv.weight"):  # nn.Conv1d's depthwise [C, 1, k] -> the decoder's [C, k]
            tensor = tensor.squeeze(1)
        if new.endswith((".attention.q_proj.weight", ".attention.q_proj.bias")):
            # rows per head: head_dim of q, then head_dim of its gate (ref: Qwen3_5Attention.forward)
            per_head = tensor.reshape(spec.num_heads, 2 * spec.head_dim, *tensor.shape[1:])
            out[new] = per_head[:, :spec.head_dim].reshape(-1, *tensor.shape[1:])
            out[new.replace(".q_proj.", ".gate_proj.")] = per_head[:, spec.head_dim:].reshape(-1, *tensor.shape[1:])
            continue
        out[new] = tensor
    return out


# delta, attention, delta: both state kinds; 2 key heads feeding 4 value heads; head_dim 32
# (not hidden / heads); partial rotary 0.25 with its mrope sections; untied head (the recipes tie it).
TINY_CONFIG = {
    **TINY_SHAPE, "architectures": ["Qwen3_5ForCausalLM"], "model_type": "qwen3_5_text",
    "num_key_value_heads": 2, "head_dim": 32, "rms_norm_eps": 1e-6, "hidden_act": "silu",
    "layer_types": ["linear_attention", "full_attention", "linear_attention"],
    "linear_conv_kernel_dim": 4, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
    "linear_key_head_dim": 16, "linear_value_head_dim": 16, "tie_word_embeddings": False,
    "attention_bias": False,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
                        "mrope_section": [2, 1, 1], "mrope_interleaved": True},
}


def shrink_to_tiny(config: dict) -> dict:
    """A recipe's Qwen3.5 config (the multimodal one, text_config inside) as a tiny
    Qwen3_5ForCausalLM: its layer pattern up to one layer past the first attention layer,
    its head ratios and partial rotary kept."""
    text = dict(config.get("text_config") or config)
    types = text.get("layer_types") or [
        "full_attention" if (i + 1) % text.get("full_attention_interval", 4) == 0 else "linear_attention"
        for i in range(text["num_hidden_layers"])]
    first_attention = types.index("full_attention") if "full_attention" in types else 1
    types = types[:max(3, first_attention + 2)]
    heads, kv_heads = text["num_attention_heads"], text.get("num_key_value_heads") or text["num_attention_heads"]
    key_heads, value_heads = text["linear_num_key_heads"], text["linear_num_value_heads"]
    rope = dict(text.get("rope_parameters") or {})
    rope["mrope_section"] = [2, 1, 1]  # sums to the tiny rotary width / 2 (32 * 0.25 / 2)
    keep = {k: v for k, v in text.items() if k not in ("full_attention_interval",)}
    return {
        **keep, **{k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id", "vocab_size")
                   if k in config},
        "architectures": ["Qwen3_5ForCausalLM"], "model_type": "qwen3_5_text",
        "tie_word_embeddings": bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False))),
        "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": max(1, 4 * kv_heads // heads), "head_dim": 32, "max_position_embeddings": 256,
        "num_hidden_layers": len(types), "layer_types": types, "rope_parameters": {**rope, "partial_rotary_factor": 0.25},
        "linear_num_key_heads": 2, "linear_num_value_heads": 2 * max(1, value_heads // key_heads),
        "linear_key_head_dim": 16, "linear_value_head_dim": 16,
    }


register(Family(
    name="qwen3_5",
    architectures=("Qwen3_5ForCausalLM", "Qwen3_5ForConditionalGeneration"),
    spec_from_config=spec_from_config,
    convert_weights=convert_weights,
    tiny_config=TINY_CONFIG,
    shrink_to_tiny=shrink_to_tiny,
    hf_reference_class="AutoModelForCausalLM",
    # Random-weight Qwen3.5 is fragile under 4-bit weights on every target, and so is the same
    # quantized decoder run eagerly: int4 top-1 over tiny-checkpoint seeds 0-3 is 0.29, 0.37,
    # 0.25, 0.23 (ExecuTorch's quantizer, eager), 0.25-0.43 (Core ML) and 0.26-0.38 (ONNX),
    # against 0.49 for tiny Qwen3 and 0.69 for LFM2. The lowering is exact (Core ML int4 equals
    # the decoder holding its dequantized weights, top-1 100%; tests/targets/
    # test_delta_state*.py): the per-head gated norm rescales a random head's near-zero output
    # to unit size, noise included. Real checkpoints are held to the usual budgets.
    tiny_budgets={"int4": {"min_top1_agreement": 0.2}},
))
