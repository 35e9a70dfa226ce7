"""What several families' tiny configs and shrinkers share (mobilekit.tiny builds the
checkpoints). Each family's own tiny config and shrinker live in its module."""

from __future__ import annotations

# Ids fit the 512-token tiny tokenizer (mobilekit.tiny.save_tiny_tokenizer).
TINY_IDS = {"vocab_size": 512, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "max_position_embeddings": 256}
# The sizes of a transformers-style tiny config (3 layers: room for a 2:1 sliding pattern).
TINY_SHAPE = {**TINY_IDS, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
              "num_attention_heads": 4}


def shrink_transformers_layout(config: dict, default_layers: int = 3) -> dict:
    """A transformers-style config.json (hidden_size, num_attention_heads, ...) at tiny size,
    every switch that selects a code path kept. `default_layers`: the layer count when the
    config has no sliding_window_pattern (at least 3)."""
    heads = config.get("num_attention_heads", 4)
    kv_heads = config.get("num_key_value_heads") or heads
    hidden = config["hidden_size"]
    # a head_dim that differs from hidden/heads (Gemma, Mistral Nemo) stays different
    odd_head_dim = "head_dim" in config and config["head_dim"] * heads != hidden
    head_dim = 32 if odd_head_dim else 16
    tiny = {
        **config, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": max(1, 4 * kv_heads // heads), "max_position_embeddings": 256,
        "num_hidden_layers": max(3, config.get("sliding_window_pattern") or default_layers),
    }
    if "head_dim" in config:
        tiny["head_dim"] = head_dim
    if config.get("sliding_window"):
        tiny["sliding_window"] = 16
    if config.get("query_pre_attn_scalar"):  # Gemma: the same ratio to head_dim
        tiny["query_pre_attn_scalar"] = config["query_pre_attn_scalar"] * head_dim // config.get("head_dim", hidden // heads)
    if config.get("dim_model_base"):  # MiniCPM's muP width ratio, not 1
        tiny["dim_model_base"] = 32
    if config.get("original_max_position_embeddings"):  # Phi-3 LongRoPE: long factors apply past 64
        tiny["original_max_position_embeddings"] = 64
    scaling = config.get("rope_scaling")
    if isinstance(scaling, dict) and scaling.get("original_max_position_embeddings"):  # Llama 3.1's remap
        scaling = tiny["rope_scaling"] = {**scaling, "original_max_position_embeddings": 64}
    if isinstance(scaling, dict) and "long_factor" in scaling:
        # one factor per rotary frequency: resample to the tiny head's rotated lanes / 2
        frequencies = int(head_dim * config.get("partial_rotary_factor", 1.0)) // 2
        step = len(scaling["long_factor"]) / frequencies
        tiny["rope_scaling"] = {**scaling, **{key: [scaling[key][int(i * step)] for i in range(frequencies)]
                                              for key in ("long_factor", "short_factor")}}
    return tiny
