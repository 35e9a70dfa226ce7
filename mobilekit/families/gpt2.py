"""GPT-2 family (Cerebras-GPT, LaMini-GPT): GPT2LMHeadModel (ARCHITECTURES.md §8).

Learned absolute positions instead of rotary, LayerNorms with bias, Conv1D weights stored
[in, out] (transposed here), a fused c_attn split into contiguous q | k | v blocks, plain
MLP, biases everywhere, tied head. Cerebras-GPT uses exact gelu, GPT-2/LaMini gelu_new.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from mobilekit.errors import CheckpointError
from mobilekit.families import Family, activation, register, rename
from mobilekit.modeling.spec import DecoderSpec

if TYPE_CHECKING:
    import torch


def spec_from_config(config: Mapping) -> DecoderSpec:
    # GPT-2's config keys never changed; read config.json as it is.
    if not config.get("scale_attn_weights", True) or config.get("scale_attn_by_inverse_layer_idx"):
        raise CheckpointError("GPT-2 checkpoints with scale_attn_weights=false or "
                              "scale_attn_by_inverse_layer_idx=true are not supported")
    d, heads = config["n_embd"], config["n_head"]
    return DecoderSpec(
        vocab_size=config["vocab_size"],
        hidden_size=d,
        num_layers=config["n_layer"],
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=d // heads,
        intermediate_size=config.get("n_inner") or 4 * d,
        max_position_embeddings=config["n_positions"],
        norm_eps=config.get("layer_norm_epsilon", 1e-5),
        activation=activation(config.get("activation_function", "gelu_new")),
        rotary_dim=0,
        learned_positions=True,
        qkv_bias=True,
        output_bias=True,
        mlp_bias=True,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", True)),
        norm="layer",
        mlp="plain",
    )


_RENAMES = {
    "wte": "embed_tokens",
    "wpe": "embed_positions",
    "h": "layers",
    "ln_1": "input_norm",
    "ln_2": "post_attention_norm",
    "attn": "attention",
    "c_fc": "fc_in",
    "ln_f": "norm",
}
_CONV1D = ("c_attn.weight", "c_proj.weight", "c_fc.weight")  # stored [in, out]


def convert_weights(state: Mapping[str, torch.Tensor], spec: DecoderSpec) -> dict[str, torch.Tensor]:
    import torch

    out = {}
    d = spec.hidden_size
    for name, tensor in state.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):  # causal-mask buffers, not weights
            continue
        if name.startswith("lm_head.") and spec.tie_word_embeddings:
            continue
        if name.endswith(_CONV1D):
            tensor = tensor.t()
        new = rename(name, ("transformer.",), _RENAMES)
        if ".attention.c_attn." in new:
            prefix, kind = new.split("c_attn.")
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), torch.split(tensor, d, dim=0)):
                out[f"{prefix}{proj}.{kind}"] = part.contiguous()
            continue
        new = new.replace(".attention.c_proj.", ".attention.o_proj.").replace(".mlp.c_proj.", ".mlp.fc_out.")
        out[new] = tensor.contiguous()
    return out


# Conv1D weights, learned positions, exact gelu (Cerebras-GPT), tied head.
TINY_CONFIG = {
    "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 512, "n_embd": 64,
    "n_layer": 3, "n_head": 4, "n_positions": 256, "activation_function": "gelu",
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "layer_norm_epsilon": 1e-5,
}


def shrink_to_tiny(config: dict) -> dict:
    return {**config, "n_embd": 64, "n_layer": 3, "n_head": 4, "n_positions": 256,
            "n_inner": None if config.get("n_inner") is None else 256}


register(Family(
    name="gpt2",
    architectures=("GPT2LMHeadModel",),
    spec_from_config=spec_from_config,
    convert_weights=convert_weights,
    tiny_config=TINY_CONFIG,
    shrink_to_tiny=shrink_to_tiny,
    hf_reference_class="AutoModelForCausalLM",
    model_types=("gpt2",),
    gguf_architectures={"gpt2": "GPT2LMHeadModel"},
))
