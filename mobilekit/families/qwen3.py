"""Qwen3 family: Qwen3ForCausalLM (dense Qwen3 and Qwen3-2507).

Qwen2's layout without the q/k/v biases, plus RMSNorms on q and k over head_dim, per head,
before rotary (transformers models/qwen3/modeling_qwen3.py); head_dim is explicit (128) and
differs from hidden / heads. Weight names are Llama's plus q_norm / k_norm, which are the
decoder's own names.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

from mobilekit.errors import CheckpointError
from mobilekit.families import Family, llama, register
from mobilekit.modeling.spec import DecoderSpec


def spec_from_config(config: Mapping) -> DecoderSpec:
    # As Qwen2: sliding_window only applies when use_sliding_window is true, and no published
    # Qwen3 checkpoint sets it.
    if config.get("use_sliding_window"):
        raise CheckpointError("this Qwen3 checkpoint enables use_sliding_window, which mobilekit does not implement")
    base = llama.spec_from_config({**config, "sliding_window": None})
    return dataclasses.replace(base, qk_norm=True)


# q/k norms, head_dim 32 with hidden / heads = 16, GQA, tied head, rope theta 1e6.
TINY_CONFIG = {
    **llama.TINY_CONFIG,
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "head_dim": 32,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "use_sliding_window": False,
}

register(Family(
    name="qwen3",
    architectures=("Qwen3ForCausalLM",),
    spec_from_config=spec_from_config,
    convert_weights=llama.convert_weights,
    tiny_config=TINY_CONFIG,
    hf_reference_class="AutoModelForCausalLM",
    gguf_architectures={"qwen3": "Qwen3ForCausalLM"},
))
