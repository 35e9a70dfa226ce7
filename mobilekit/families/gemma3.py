"""Gemma 3 (text) family: Gemma3ForCausalLM (ARCHITECTURES.md §6).

Gemma 2's layout without softcaps, plus (1 + w) RMSNorms on q and k, a local rotary base
for the sliding layers and a global one for the full layers (5:1 by default).
"""

from __future__ import annotations

from typing import Mapping

from mobilekit.families import Family, gemma2, hf_config, register, rope_parameters, require_default_rope
from mobilekit.families._tiny import TINY_SHAPE, shrink_transformers_layout
from mobilekit.modeling.spec import DecoderSpec


def spec_from_config(config: Mapping) -> DecoderSpec:
    config = hf_config(config)
    full, local = rope_parameters(config, "full_attention"), rope_parameters(config, "sliding_attention")
    require_default_rope(full, "Gemma 3")
    require_default_rope(local, "Gemma 3")
    return gemma2.gemma_spec(
        config, "Gemma 3", qk_norm=True,
        rope_theta=float(full.get("rope_theta", 1_000_000.0)),
        rope_theta_local=float(local.get("rope_theta", 10_000.0)),
    )


# + q/k norms, MQA, head_dim 32 (H*hd != d), local/global rotary bases, 2:1 sliding.
TINY_CONFIG = {
    **TINY_SHAPE, "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
    "num_key_value_heads": 1, "head_dim": 32, "query_pre_attn_scalar": 32, "sliding_window": 16,
    "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
    "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                        "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}},
    "rms_norm_eps": 1e-6,
}


def shrink_to_tiny(config: dict) -> dict:
    # 6 layers unless the config says its pattern: at least one global layer among the
    # sliding ones (Gemma 3 defaults to 5 sliding : 1 global)
    return shrink_transformers_layout(config, default_layers=6)


register(Family(
    name="gemma3",
    architectures=("Gemma3ForCausalLM",),
    spec_from_config=spec_from_config,
    convert_weights=gemma2.convert_weights,  # q_norm/k_norm: same (1 + w) folding
    tiny_config=TINY_CONFIG,
    shrink_to_tiny=shrink_to_tiny,
    hf_reference_class="AutoModelForCausalLM",
    model_types=("gemma3_text",),
    gguf_architectures={"gemma3": "Gemma3ForCausalLM"},
))
