"""OpenELM family: OpenELMForCausalLM (ARCHITECTURES.md §13). Not in transformers.

Layer-wise scaling: every layer has its own query/kv head counts and FFN width, computed
from the config's multipliers exactly as the remote configuration class does. One fused
qkv projection per layer ([Q; K; V] head blocks), per-head q/k RMSNorm, shared
input/output embeddings, RMSNorm eps 1e-6 everywhere (the class default; no config key).
Read from the checkpoint's own config.json; its remote code is never run.
"""

from __future__ import annotations

from numbers import Number
from typing import TYPE_CHECKING, Mapping

from mobilekit.errors import CheckpointError
from mobilekit.families import Family, activation, layer_index, register, rename
from mobilekit.modeling.spec import DecoderSpec

if TYPE_CHECKING:
    import torch

NORM_EPS = 1e-6  # ref: modeling_openelm.py OpenELMRMSNorm(eps=1e-6), used for every norm

TOKENIZER_HINT = (
    "OpenELM checkpoints ship no tokenizer: they use the Llama-2 tokenizer (SentencePiece, 32000 ids, "
    "<s>=1, </s>=2). Pass --tokenizer T, where T is a folder holding tokenizer.model (and optionally "
    "tokenizer.json, tokenizer_config.json, special_tokens_map.json), e.g. `huggingface-cli download "
    "meta-llama/Llama-2-7b-hf tokenizer.model tokenizer_config.json special_tokens_map.json --local-dir T` "
    "(a gated repo: accept its licence first), or a hub id such as TinyLlama/TinyLlama-1.1B-Chat-v1.0"
)


def make_divisible(v: float, divisor: int) -> int:
    """ref: configuration_openelm.py make_divisible (min_value = divisor): the nearest multiple,
    plus one more divisor if that rounded down by more than 10%."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return int(new_v + divisor if new_v < 0.9 * v else new_v)


def _multipliers(value, layers: int, key: str) -> list[float]:
    """A number (uniform), two ends (linspace rounded to 2 places, numpy's round as the
    configuration class uses) or one value per layer (how the hub files store ffn_multipliers)."""
    import numpy as np

    if isinstance(value, Number):
        return [float(value)] * layers
    value = list(value)
    if len(value) == 2:
        return [round(v, 2) for v in np.linspace(value[0], value[1], num=layers, dtype=float)]
    if len(value) == layers:
        return [float(v) for v in value]
    raise CheckpointError(f"OpenELM {key} must be a number, two ends or one value per layer ({layers}); got {value}")


def layer_sizes(config: Mapping) -> tuple[list[int], list[int], list[int]]:
    """(query heads, kv heads, FFN width) per layer, ref: configuration_openelm.py __post_init__."""
    layers, d, hd = config["num_transformer_layers"], config["model_dim"], config["head_dim"]
    groups = config["num_gqa_groups"]  # query heads per kv head
    qkv = config.get("qkv_multipliers", 1.0)
    if not isinstance(qkv, Number) and len(qkv) != 2:
        raise CheckpointError(f"OpenELM qkv_multipliers must be a number or two ends; got {qkv}")
    q_dims = [make_divisible(d * m, hd * groups) for m in _multipliers(qkv, layers, "qkv_multipliers")]
    heads = [q // hd for q in q_dims]
    ffn = _multipliers(config.get("ffn_multipliers", 4.0), layers, "ffn_multipliers")
    widths = [make_divisible(m * d, config.get("ffn_dim_divisor", 256)) for m in ffn]
    return heads, [h // groups for h in heads], widths


def spec_from_config(config: Mapping) -> DecoderSpec:
    if config.get("normalization_layer_name", "rms_norm") != "rms_norm":
        raise CheckpointError(
            f"OpenELM normalization {config['normalization_layer_name']!r} is not supported (supported: rms_norm)"
        )
    heads, kv_heads, widths = layer_sizes(config)
    # The stored per-layer lists are recomputed (and ignored) by the remote class: if they
    # disagree, the config is not what this port reads it as.
    for key, ours in (("num_query_heads", heads), ("num_kv_heads", kv_heads)):
        stored = config.get(key)
        if isinstance(stored, list) and stored != ours:
            raise CheckpointError(f"OpenELM config.json stores {key} {stored}, but its multipliers give {ours}")
    uniform = len(set(heads)) == 1 and len(set(kv_heads)) == 1 and len(set(widths)) == 1
    return DecoderSpec(
        vocab_size=config["vocab_size"],
        hidden_size=config["model_dim"],
        num_layers=config["num_transformer_layers"],
        num_heads=max(heads),
        num_kv_heads=max(kv_heads),
        head_dim=config["head_dim"],
        intermediate_size=max(widths),
        # rope_max_length is only the size of the remote code's rotary table
        max_position_embeddings=config["max_context_length"],
        norm_eps=NORM_EPS,
        activation=activation(config.get("activation_fn_name", "swish")),
        rope_theta=float(config.get("rope_freq_constant", 10000)),
        mlp="gated" if config.get("ffn_with_glu", True) else "plain",
        qk_norm=bool(config.get("normalize_qk_projections", False)),
        tie_word_embeddings=bool(config.get("share_input_output_layers", False)),
        layer_num_heads=() if uniform else tuple(heads),
        layer_num_kv_heads=() if uniform else tuple(kv_heads),
        layer_intermediate_sizes=() if uniform else tuple(widths),
    )


def checkpoint_shapes(config: Mapping) -> dict[str, tuple[int, ...]]:
    d, hd, vocab = config["model_dim"], config["head_dim"], config["vocab_size"]
    glu = config.get("ffn_with_glu", True)
    shapes = {"transformer.token_embeddings.weight": (vocab, d), "transformer.norm.weight": (d,)}
    for i, (q, kv, f) in enumerate(zip(*layer_sizes(config))):
        p = f"transformer.layers.{i}."
        shapes.update({
            p + "attn_norm.weight": (d,),
            p + "attn.qkv_proj.weight": ((q + 2 * kv) * hd, d),
            p + "attn.out_proj.weight": (d, q * hd),
            p + "ffn_norm.weight": (d,),
            p + "ffn.proj_1.weight": ((2 if glu else 1) * f, d),
            p + "ffn.proj_2.weight": (d, f),
        })
        if config.get("normalize_qk_projections", False):
            shapes.update({p + "attn.q_norm.weight": (hd,), p + "attn.k_norm.weight": (hd,)})
    if not config.get("share_input_output_layers", False):
        shapes["lm_head.weight"] = (vocab, d)
    return shapes


_RENAMES = {
    "token_embeddings": "embed_tokens",
    "attn_norm": "input_norm",
    "ffn_norm": "post_attention_norm",
    "attn": "attention",
    "out_proj": "o_proj",
    "ffn": "mlp",
}


def convert_weights(state: Mapping[str, torch.Tensor], spec: DecoderSpec) -> dict[str, torch.Tensor]:
    import torch

    out = {}
    for name, tensor in state.items():
        if name.startswith("transformer.classifier."):  # built but unused by the remote model (unshared heads)
            continue
        if name == "lm_head.weight" and spec.tie_word_embeddings:
            continue
        new = rename(name, ("transformer.",), _RENAMES)
        prefix = new.rsplit(".", 2)[0] + "."
        if new.endswith(".qkv_proj.weight"):
            i = layer_index(name)
            # rows are Hq query heads, then Hkv key heads, then Hkv value heads (contiguous)
            q_rows, kv_rows = spec.layer_heads(i) * spec.head_dim, spec.layer_kv_heads(i) * spec.head_dim
            q, k, v = torch.split(tensor, [q_rows, kv_rows, kv_rows], dim=0)
            out.update({prefix + "q_proj.weight": q, prefix + "k_proj.weight": k, prefix + "v_proj.weight": v})
        elif new.endswith(".proj_1.weight"):
            if spec.mlp == "gated":
                gate, up = tensor.chunk(2, dim=0)  # first half is the gate
                out.update({prefix + "gate_proj.weight": gate, prefix + "up_proj.weight": up})
            else:
                out[prefix + "fc_in.weight"] = tensor
        elif new.endswith(".proj_2.weight"):
            out[prefix + ("down_proj" if spec.mlp == "gated" else "fc_out") + ".weight"] = tensor
        else:
            out[new] = tensor
    return out


# The checkpoint's own config.json schema, the same dict as tests/reference/openelm.TINY_CONFIG
# (a test keeps them equal). Layer-wise scaling, query heads 2/4/4/4, kv heads 1/2/2/2 (MQA
# then GQA), FFN 32/128/192/256; per-head q/k norms; shared embeddings. ffn_multipliers and
# the head lists stored expanded, as the hub's config.json files store them. Every
# in_features is a multiple of 32, so the int4 schemes' blocks of 32 apply unchanged.
TINY_CONFIG = {
    "architectures": ["OpenELMForCausalLM"], "model_type": "openelm", "vocab_size": 512, "max_context_length": 256,
    "num_transformer_layers": 4, "model_dim": 64, "head_dim": 16, "num_gqa_groups": 2,
    "qkv_multipliers": [0.5, 1.0], "ffn_multipliers": [0.5, 1.67, 2.83, 4.0], "ffn_with_glu": True,
    "ffn_dim_divisor": 32, "activation_fn_name": "swish", "normalization_layer_name": "rms_norm",
    "normalize_qk_projections": True, "share_input_output_layers": True, "rope_freq_constant": 10000,
    "rope_max_length": 512, "initializer_range": 0.02, "bos_token_id": 1, "eos_token_id": 2,
    "num_query_heads": [2, 4, 4, 4], "num_kv_heads": [1, 2, 2, 2],
}
_SIZE_KEYS = ("num_transformer_layers", "model_dim", "head_dim", "num_gqa_groups", "qkv_multipliers",
              "ffn_multipliers", "ffn_dim_divisor", "num_query_heads", "num_kv_heads", "max_context_length",
              "rope_max_length")


def shrink_to_tiny(config: dict) -> dict:
    # the tiny config's whole layer-wise scaling replaces the recipe's: sizes only, switches kept
    return {**config, **{key: TINY_CONFIG[key] for key in _SIZE_KEYS}}


register(Family(
    name="openelm",
    architectures=("OpenELMForCausalLM",),
    spec_from_config=spec_from_config,
    convert_weights=convert_weights,
    tiny_config=TINY_CONFIG,
    shrink_to_tiny=shrink_to_tiny,
    model_types=("openelm",),
    checkpoint_shapes=checkpoint_shapes,
    tokenizer_hint=TOKENIZER_HINT,
))
