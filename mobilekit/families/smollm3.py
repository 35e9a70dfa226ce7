"""SmolLM3 family: SmolLM3ForCausalLM (Hugging Face's 3B, July 2025).

A Llama (GQA, tied head, rope theta 5e6) whose every 4th layer is a NoPE layer: its attention
has no rotary (config no_rope_layers: 1 = rotary, 0 = none), transformers
models/smollm3/modeling_smollm3.py. Weight names are Llama's.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

from mobilekit.errors import CheckpointError
from mobilekit.families import Family, hf_config, llama, register
from mobilekit.families._tiny import shrink_transformers_layout
from mobilekit.modeling.spec import DecoderSpec


def spec_from_config(config: Mapping) -> DecoderSpec:
    # hf_config fills no_rope_layers from no_rope_layer_interval when a config has only that
    config = hf_config(config)
    if config.get("use_sliding_window"):
        raise CheckpointError("this SmolLM3 checkpoint enables use_sliding_window, which mobilekit does not implement")
    base = llama.spec_from_config({**config, "sliding_window": None})
    uses_rope = config["no_rope_layers"]
    if len(uses_rope) != base.num_layers:
        raise CheckpointError(
            f"no_rope_layers has {len(uses_rope)} entries; it needs one per layer ({base.num_layers})")
    return dataclasses.replace(base, nope_layers=tuple(i for i, rope in enumerate(uses_rope) if not rope))


# 3 layers with interval 3: layer 2 is NoPE (between rotary layers and the head); GQA, tied head.
TINY_CONFIG = {
    **llama.TINY_CONFIG,
    "architectures": ["SmolLM3ForCausalLM"],
    "model_type": "smollm3",
    "num_hidden_layers": 3,
    "rope_theta": 5000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "no_rope_layer_interval": 3,
    "pad_token_id": 0,
    "use_sliding_window": False,
}


def shrink_to_tiny(config: dict) -> dict:
    """A recipe's SmolLM3 config at tiny size: 4 layers, the NoPE pattern's first 4 entries."""
    tiny = shrink_transformers_layout(config, default_layers=4)
    if "no_rope_layers" in config:
        tiny["no_rope_layers"] = list(config["no_rope_layers"][:tiny["num_hidden_layers"]])
    tiny.pop("layer_types", None)
    return tiny


register(Family(
    name="smollm3",
    architectures=("SmolLM3ForCausalLM",),
    spec_from_config=spec_from_config,
    convert_weights=llama.convert_weights,
    tiny_config=TINY_CONFIG,
    shrink_to_tiny=shrink_to_tiny,
    hf_reference_class="AutoModelForCausalLM",
))
