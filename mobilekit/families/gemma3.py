"""Gemma 3 (text) family: Gemma3ForCausalLM (ARCHITECTURES.md §6).

Gemma 2's layout without softcaps, plus (1 + w) RMSNorms on q and k, a local rotary base
for the sliding layers and a global one for the full layers (5:1 by default).
"""

from __future__ import annotations

from typing import Mapping

from mobilekit.families import Family, gemma2, hf_config, rope_parameters, require_default_rope
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


FAMILY = Family(
    name="gemma3",
    architectures=("Gemma3ForCausalLM",),
    spec_from_config=spec_from_config,
    convert_weights=gemma2.convert_weights,  # q_norm/k_norm: same (1 + w) folding
    hf_reference_class="AutoModelForCausalLM",
    model_types=("gemma3_text",),
)
