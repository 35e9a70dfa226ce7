"""LFM2's config reading: the keys Liquid AI's config.json files spell their own way, the MLP
width rule, and the layer pattern. (The tiny LFM2 on every target: test_more_families.py.)"""

import pytest

from mobilekit import families, recipes
from mobilekit.errors import CheckpointError
from mobilekit.families.lfm2 import mlp_width, spec_from_config
from mobilekit.tiny import recipe_tiny_config

# LFM2-1.2B's config.json as published (transformers 4.54 era): full_attn_idxs instead of
# layer_types, block_ff_dim next to a stale intermediate_size, tie_embedding.
LFM2_1_2B = {
    "architectures": ["Lfm2ForCausalLM"], "model_type": "lfm2", "block_auto_adjust_ff_dim": True,
    "block_ff_dim": 12288, "block_ffn_dim_multiplier": 1.0, "block_multiple_of": 256, "conv_L_cache": 3,
    "conv_bias": False, "intermediate_size": 8192, "full_attn_idxs": [2, 5, 8, 10, 12, 14], "hidden_size": 2048,
    "max_position_embeddings": 128000, "norm_eps": 1e-05, "num_attention_heads": 32, "num_hidden_layers": 16,
    "num_key_value_heads": 8, "rope_theta": 1000000.0, "tie_embedding": True, "vocab_size": 65536,
    "bos_token_id": 1, "eos_token_id": 7, "pad_token_id": 0,
}


def test_published_config_keys():
    spec = spec_from_config(LFM2_1_2B)
    assert spec.intermediate_size == 8192  # block_ff_dim 12288 -> 2/3 -> rounded to 256
    assert spec.attention_layers == (2, 5, 8, 10, 12, 14)
    assert len(spec.conv_layers) == 10 and spec.conv_kernel == 3 and not spec.conv_bias
    assert spec.qk_norm and spec.qk_norm_width == "head" and spec.tie_word_embeddings
    assert spec.num_parameters == 1_170_340_608  # the model card's count


@pytest.mark.parametrize("config, width", [
    ({"intermediate_size": 6656}, 4608),  # LFM2-350M
    ({"intermediate_size": 10240}, 6912),  # LFM2-700M
    ({"intermediate_size": 10752, "block_auto_adjust_ff_dim": False}, 10752),  # LFM2-2.6B
    ({"intermediate_size": 12288, "block_ffn_dim_multiplier": None}, 8192),
])
def test_mlp_width_rule(config, width):
    assert mlp_width({"block_ffn_dim_multiplier": 1.0, "block_multiple_of": 256, **config}) == width


def test_unknown_layer_type_is_named():
    config = {**families.get("lfm2").tiny_config, "layer_types": ["conv", "linear_attention", "conv"]}
    with pytest.raises(CheckpointError, match="linear_attention"):
        spec_from_config(config)


@pytest.mark.parametrize("recipe_id", [r for r in recipes.names() if recipes.get(r).family == "lfm2"])
def test_tiny_recipe_keeps_both_state_kinds(recipe_id):
    spec = spec_from_config(recipe_tiny_config(recipes.get(recipe_id)))
    assert spec.conv_layers and spec.attention_layers and spec.hidden_size == 64
    assert spec.intermediate_size == 128  # 192 -> 2/3 -> rounded to 32
