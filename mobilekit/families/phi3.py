"""Phi-3 family: Phi3ForCausalLM (ARCHITECTURES.md §9), Phi-3.5 and Phi-4-mini.

A Llama with fused projections (qkv_proj = [q; k; v] rows, gate_up_proj = [gate; up] rows)
and LongRoPE frequency scaling; Phi-4-mini adds partial rotary (0.75 of head_dim, the
LongRoPE factors one per rotated frequency) and a tied head.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Mapping

from mobilekit.errors import CheckpointError
from mobilekit.families import Family, llama, register
from mobilekit.modeling.spec import DecoderSpec, LongRopeScaling

if TYPE_CHECKING:
    import torch


def _longrope(config: Mapping, rotary_dim: int) -> LongRopeScaling | None:
    # transformers 5 folds rope_scaling into rope_parameters; hub configs carry rope_scaling,
    # with the Phi-3-era names "su"/"yarn" for LongRoPE (ARCHITECTURES.md §0.5, §9).
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return None
    if kind not in ("longrope", "su", "yarn"):
        raise CheckpointError(f"Phi-3 rope scaling {kind!r} is not supported (supported: none, longrope)")
    original = int(params.get("original_max_position_embeddings") or config["original_max_position_embeddings"])
    short, long = tuple(map(float, params["short_factor"])), tuple(map(float, params["long_factor"]))
    if len(short) != rotary_dim // 2 or len(long) != rotary_dim // 2:
        raise CheckpointError(f"longrope factors must have one entry per rotary frequency ({rotary_dim // 2}: "
                              "head_dim x partial_rotary_factor / 2)")
    # ref: transformers modeling_rope_utils._compute_longrope_parameters
    factor = config["max_position_embeddings"] / original
    attention = params.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    return LongRopeScaling(short, long, original, float(attention))


def _partial_rotary_factor(config: Mapping) -> float:
    # top level in hub config.json files (Phi-4-mini: 0.75), inside rope_parameters in transformers 5's
    params = config.get("rope_parameters") or {}
    return float(config.get("partial_rotary_factor", params.get("partial_rotary_factor", 1.0)))


def spec_from_config(config: Mapping) -> DecoderSpec:
    plain = {k: v for k, v in config.items() if k not in ("rope_scaling", "rope_parameters")}
    plain["rope_theta"] = (config.get("rope_parameters") or {}).get("rope_theta", config.get("rope_theta", 10000.0))
    base = llama.spec_from_config({**plain, "sliding_window": None})
    window = config.get("sliding_window")
    if window is not None and window < base.max_position_embeddings:
        base = dataclasses.replace(base, sliding_window=window)
    # transformers: int(head_dim * partial_rotary_factor) lanes rotate, half-split within them
    rotary_dim = int(base.head_dim * _partial_rotary_factor(config))
    return dataclasses.replace(base, rotary_dim=None if rotary_dim == base.head_dim else rotary_dim,
                               rope_scaling=_longrope(config, rotary_dim))


def convert_weights(state: Mapping[str, torch.Tensor], spec: DecoderSpec) -> dict[str, torch.Tensor]:
    import torch

    q_rows, kv_rows = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    split = {}
    for name, tensor in state.items():
        if name.endswith("self_attn.qkv_proj.weight"):
            prefix = name.removesuffix("qkv_proj.weight")
            q, k, v = torch.split(tensor, [q_rows, kv_rows, kv_rows], dim=0)
            split.update({prefix + "q_proj.weight": q, prefix + "k_proj.weight": k, prefix + "v_proj.weight": v})
        elif name.endswith("mlp.gate_up_proj.weight"):
            prefix = name.removesuffix("gate_up_proj.weight")
            gate, up = tensor.chunk(2, dim=0)  # first half is the gate (ARCHITECTURES.md §0.4)
            split.update({prefix + "gate_proj.weight": gate, prefix + "up_proj.weight": up})
        else:
            split[name] = tensor
    return llama.convert_weights(split, spec)


# Fused qkv and gate_up projections, LongRoPE (original context 64 of 256), and Phi-4-mini's
# partial rotary (half of head_dim 16: 4 frequencies, 4 factors each), GQA and tied head.
# (Phi-3.5's full rotary, untied head: the phi-3.5-mini-instruct recipe's tiny matrix cells.)
TINY_CONFIG = {
    **llama.TINY_CONFIG,
    "architectures": ["Phi3ForCausalLM"],
    "model_type": "phi3",
    "num_key_value_heads": 2,
    "partial_rotary_factor": 0.5,
    "tie_word_embeddings": True,
    "original_max_position_embeddings": 64,
    "rope_scaling": {
        "type": "longrope",
        "short_factor": [1.0, 1.3, 2.0, 3.1],
        "long_factor": [1.0, 2.5, 6.0, 13.0],
    },
    "sliding_window": None,
    "pad_token_id": 0,
}

register(Family(
    name="phi3",
    architectures=("Phi3ForCausalLM",),
    spec_from_config=spec_from_config,
    convert_weights=convert_weights,
    tiny_config=TINY_CONFIG,
    hf_reference_class="AutoModelForCausalLM",
    gguf_architectures={"phi3": "Phi3ForCausalLM"},
))
