"""MiniCPM family (v1/v2): MiniCPMForCausalLM (ARCHITECTURES.md §12). Not in transformers.

A Llama (same config keys, same weight names) with three muP scales: the embedding times
scale_emb, each sub-layer output times scale_depth / sqrt(num_hidden_layers) before its
residual add, and the final hidden state divided by hidden_size / dim_model_base before the
(tied) head. Read from the checkpoint's own config.json; its remote code is never run.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

from mobilekit.errors import CheckpointError
from mobilekit.families import Family, llama, register
from mobilekit.modeling.spec import DecoderSpec

# ref: configuration_minicpm.py defaults (ARCHITECTURES.md §12): the key absent or null means these.
DEFAULTS = {"scale_emb": 1, "dim_model_base": 1, "scale_depth": 1, "tie_word_embeddings": True,
            "rms_norm_eps": 1e-6, "rope_theta": 10000.0}


def _get(config: Mapping, key: str):
    value = config.get(key)
    return DEFAULTS[key] if value is None else value


def spec_from_config(config: Mapping) -> DecoderSpec:
    if config.get("rope_scaling"):
        raise CheckpointError(
            "MiniCPM checkpoints with rope scaling (MiniCPM-2B-128k's dynamic NTK) are not supported (supported: none)"
        )
    if config.get("attention_bias"):
        raise CheckpointError("MiniCPM checkpoints with attention biases are not supported")
    plain = {k: v for k, v in config.items() if k not in ("rope_scaling", "rope_parameters")}
    plain.update(rms_norm_eps=_get(config, "rms_norm_eps"), rope_theta=_get(config, "rope_theta"),
                 tie_word_embeddings=_get(config, "tie_word_embeddings"), sliding_window=None, head_dim=None)
    base = llama.spec_from_config(plain)
    return dataclasses.replace(
        base,
        embedding_scale=float(_get(config, "scale_emb")),
        residual_scale=float(_get(config, "scale_depth")) / math.sqrt(base.num_layers),
        logit_divisor=base.hidden_size / float(_get(config, "dim_model_base")),
    )


def checkpoint_shapes(config: Mapping) -> dict[str, tuple[int, ...]]:
    spec = spec_from_config(config)
    d, hd, inter = spec.hidden_size, spec.head_dim, spec.intermediate_size
    shapes = {"model.embed_tokens.weight": (spec.vocab_size, d), "model.norm.weight": (d,)}
    for i in range(spec.num_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (spec.num_heads * hd, d),
            p + "self_attn.k_proj.weight": (spec.num_kv_heads * hd, d),
            p + "self_attn.v_proj.weight": (spec.num_kv_heads * hd, d),
            p + "self_attn.o_proj.weight": (d, spec.num_heads * hd),
            p + "post_attention_layernorm.weight": (d,),
            p + "mlp.gate_proj.weight": (inter, d),
            p + "mlp.up_proj.weight": (inter, d),
            p + "mlp.down_proj.weight": (d, inter),
        })
    if not spec.tie_word_embeddings:
        shapes["lm_head.weight"] = (spec.vocab_size, d)
    return shapes


# The checkpoint's own config.json schema, the same dict as tests/reference/minicpm.TINY_CONFIG
# (a test keeps them equal). Every muP scale away from 1 (embedding x12, residual
# x1.4/sqrt(3), logits / (64/32)), GQA 4/2, tied head.
TINY_CONFIG = {
    **{k: llama.TINY_CONFIG[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "bos_token_id",
                                         "eos_token_id", "rope_theta", "hidden_act", "num_attention_heads",
                                         "num_key_value_heads")},
    "architectures": ["MiniCPMForCausalLM"], "model_type": "minicpm", "num_hidden_layers": 3,
    "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_scaling": None,
    "scale_emb": 12, "dim_model_base": 32, "scale_depth": 1.4, "tie_word_embeddings": True,
}

register(Family(
    name="minicpm",
    architectures=("MiniCPMForCausalLM",),
    spec_from_config=spec_from_config,
    # Llama's names; a tied checkpoint that still carries lm_head.weight has it dropped there.
    convert_weights=llama.convert_weights,
    tiny_config=TINY_CONFIG,
    model_types=("minicpm",),
    checkpoint_shapes=checkpoint_shapes,
))
