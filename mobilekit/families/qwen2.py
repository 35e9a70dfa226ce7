"""Qwen2 family: Qwen2ForCausalLM (ARCHITECTURES.md §4).

A Llama with biases on q/k/v (not on o_proj or the MLP); weight names are Llama's.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

from mobilekit.errors import CheckpointError
from mobilekit.families import Family, llama, register
from mobilekit.modeling.spec import DecoderSpec


def spec_from_config(config: Mapping) -> DecoderSpec:
    # ref: transformers models/qwen2/configuration_qwen2.py — sliding_window is inert unless
    # use_sliding_window is true; every published Qwen2 checkpoint has it false.
    if config.get("use_sliding_window"):
        raise CheckpointError(
            "this Qwen2 checkpoint enables use_sliding_window, which mobilekit does not implement"
        )
    base = llama.spec_from_config({**config, "sliding_window": None, "attention_bias": False})
    return dataclasses.replace(base, qkv_bias=True, output_bias=False)


# q/k/v biases, no o_proj bias, tied embeddings, rope theta 1e6.
TINY_CONFIG = {
    **llama.TINY_CONFIG,
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
}

register(Family(
    name="qwen2",
    architectures=("Qwen2ForCausalLM",),
    spec_from_config=spec_from_config,
    convert_weights=llama.convert_weights,
    tiny_config=TINY_CONFIG,
    hf_reference_class="AutoModelForCausalLM",
    gguf_architectures={"qwen2": "Qwen2ForCausalLM"},
))
