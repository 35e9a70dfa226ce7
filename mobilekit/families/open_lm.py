"""open_lm family (DCLM): OpenLMForCausalLM / OpenLMModel (ARCHITECTURES.md §14). Not in transformers.

Gain-only LayerNorms (weight, no bias), a fused in_proj ([Q; K; V] blocks of width d), QK
LayerNorm over all d lanes before the head split, rotary with theta fixed at 10000, a fused
SwiGLU w12 ([gate; up]) with hidden = 256 * ceil(int(8d/3) / 256), untied head. Two
config.json layouts: flat (current revisions) and nested under `params_args_dict` (early
ones), which spell the norm kind `norm_type` / `model_norm` and the QK norm `apply_qk_norm`
/ `qk_norm`. Read from the checkpoint's own config.json; open_lm is never imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from mobilekit.errors import CheckpointError
from mobilekit.families import Family, register, rename
from mobilekit.modeling.spec import DecoderSpec

if TYPE_CHECKING:
    import torch

ROPE_THETA = 10000.0  # ref: open_lm positional_embedding/rotary.py (not configurable)
# norm kind -> (DecoderSpec.norm, norm_bias); ref: open_lm norms.py. "lp" variants differ only
# under autocast (they run the norm in the activation dtype).
NORM_KINDS = {
    "default_layer_norm": ("layer", True),
    "lp_layer_norm": ("layer", True),
    "gain_only_layer_norm": ("layer", False),
    "gain_only_lp_layer_norm": ("layer", False),
    "rms_norm": ("rms", True),
}
# Keys of open_lm variants this port does not cover (linear attention, e.g. TRI-ML/mistral-supra).
_UNSUPPORTED_KEYS = ("n_heads_kv", "intermediate_dim_ffn", "qk_head_dim")


def _either(src: Mapping, keys: tuple[str, str], default):
    """The value of whichever spelling is present; both present and different is an error."""
    present = {k: src[k] for k in keys if k in src}
    if len(present) == 2 and present[keys[0]] != present[keys[1]]:
        raise CheckpointError(f"open_lm config has {keys[0]} {present[keys[0]]!r} and {keys[1]} "
                              f"{present[keys[1]]!r}; they must agree")
    return next(iter(present.values()), default)


def params(config: Mapping) -> dict:
    """The model's hyper-parameters from either layout, with open_lm's defaults."""
    nested = config.get("params_args_dict")
    src = nested or config
    if "dim" not in src and "hidden_dim" not in src:
        raise CheckpointError("not an open_lm-schema config: it has neither `dim` nor `params_args_dict`")
    unsupported = [k for k in _UNSUPPORTED_KEYS if src.get(k) is not None]
    if unsupported:
        raise CheckpointError(f"open_lm variants with {unsupported} are not supported (DCLM's softmax attention only)")
    dim = src.get("dim", src.get("hidden_dim"))
    norm = _either(src, ("norm_type", "model_norm"), "default_layer_norm")  # open_lm's default: nn.LayerNorm
    if norm not in NORM_KINDS:
        raise CheckpointError(f"open_lm norm {norm!r} is not supported (supported: {', '.join(NORM_KINDS)})")
    ffn = src.get("ffn_type", "swiglu")
    if ffn not in ("swiglu", "swiglu_torch"):  # xformers' and torch's SwiGLU: the same math
        raise CheckpointError(f"open_lm ffn_type {ffn!r} is not supported (supported: swiglu, swiglu_torch)")
    if src.get("positional_embedding_type", "rotary") != "rotary":
        raise CheckpointError("open_lm models without rotary embeddings are not supported")
    if src.get("moe_freq", 0):
        raise CheckpointError("mixture-of-experts open_lm models are not supported")
    if src.get("attn_name", "auto") not in ("auto", "torch_attn", "xformers_attn") or src.get("attn_activation"):
        raise CheckpointError("open_lm attention other than softmax (attn_name auto/torch_attn/xformers_attn) "
                              "is not supported")
    if src.get("post_embed_norm", False):
        raise CheckpointError("open_lm models with post_embed_norm are not supported")
    return {
        "dim": dim,
        "layers": src["n_layers"],
        "heads": src["n_heads"],
        "vocab": src["vocab_size"],
        "seq_len": src.get("seq_len", 2048),
        "eps": float(src.get("norm_eps", 1e-5)),
        "norm": norm,
        "qk_norm": bool(_either(src, ("apply_qk_norm", "qk_norm"), False)),
        "tied": bool(src.get("weight_tying", False)),
        # ref: open_lm model.py Block: 8d/3 rounded up to a multiple of 256
        "hidden": 256 * ((int(2 * 4 * dim / 3) + 256 - 1) // 256),
    }


def spec_from_config(config: Mapping) -> DecoderSpec:
    p = params(config)
    norm, bias = NORM_KINDS[p["norm"]]
    return DecoderSpec(
        vocab_size=p["vocab"],
        hidden_size=p["dim"],
        num_layers=p["layers"],
        num_heads=p["heads"],
        num_kv_heads=p["heads"],
        head_dim=p["dim"] // p["heads"],
        intermediate_size=p["hidden"],
        max_position_embeddings=p["seq_len"],
        norm_eps=p["eps"],
        norm=norm,
        norm_bias=bias,
        rope_theta=ROPE_THETA,
        qk_norm=p["qk_norm"],
        qk_norm_width="full" if p["qk_norm"] else "head",
        tie_word_embeddings=p["tied"],
    )


def checkpoint_shapes(config: Mapping) -> dict[str, tuple[int, ...]]:
    """Weight names and shapes of the HF wrapper's state dict (prefix `model.`). open_lm's
    rotary `inv_freq` buffers (persistent, so saved files may carry them) are not listed."""
    p = params(config)
    d, h = p["dim"], p["hidden"]
    with_bias = NORM_KINDS[p["norm"]] == ("layer", True)

    def norm(prefix):
        return {prefix + "weight": (d,), **({prefix + "bias": (d,)} if with_bias else {})}

    shapes = {"model.tok_embeddings.weight": (p["vocab"], d)}
    for i in range(p["layers"]):
        pre = f"model.layers.{i}."
        shapes.update({pre + "attention.in_proj.weight": (3 * d, d), pre + "attention.out_proj.weight": (d, d)})
        if p["qk_norm"]:
            shapes.update({**norm(pre + "attention.q_norm."), **norm(pre + "attention.k_norm.")})
        shapes.update({pre + "feed_forward.w12.weight": (2 * h, d), pre + "feed_forward.w3.weight": (d, h),
                       **norm(pre + "attention_norm."), **norm(pre + "ffn_norm.")})
    shapes.update(norm("model.norm."))
    if not p["tied"]:
        shapes["model.output.weight"] = (p["vocab"], d)
    return shapes


_RENAMES = {
    "tok_embeddings": "embed_tokens",
    "attention_norm": "input_norm",
    "ffn_norm": "post_attention_norm",
    "out_proj": "o_proj",
    "feed_forward": "mlp",
    "w3": "down_proj",
    "output": "lm_head",
}


def convert_weights(state: Mapping[str, torch.Tensor], spec: DecoderSpec) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in state.items():
        if name.endswith("pos_embed.inv_freq"):
            _check_inv_freq(name, tensor, spec.head_dim)
            continue
        if name == "model.output.weight" and spec.tie_word_embeddings:
            continue
        new = rename(name, ("model.",), _RENAMES)
        prefix = new.rsplit(".", 2)[0] + "."
        if new.endswith(".in_proj.weight"):
            q, k, v = tensor.chunk(3, dim=0)  # ref: open_lm attention: chunk(3, dim=-1) of the output, Q first
            out.update({prefix + "q_proj.weight": q, prefix + "k_proj.weight": k, prefix + "v_proj.weight": v})
        elif new.endswith(".w12.weight"):
            gate, up = tensor.chunk(2, dim=0)  # ref: xformers swiglu_op: w12 viewed [2, hidden, d], w1 = gate
            out.update({prefix + "gate_proj.weight": gate, prefix + "up_proj.weight": up})
        else:
            out[new] = tensor
    return out


def _check_inv_freq(name: str, tensor: torch.Tensor, head_dim: int) -> None:
    # The decoder computes its own frequencies (theta 10000); a file whose stored buffer
    # says otherwise is a model this port would run wrongly. rtol covers a bf16 copy.
    import torch

    want = 1.0 / (ROPE_THETA ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    if tensor.shape != want.shape or not torch.allclose(tensor.float(), want, rtol=1e-2, atol=0):
        raise CheckpointError(f"{name} is not the rotary frequencies of theta {ROPE_THETA:g} over head_dim {head_dim}")


# DCLM-1B's flat schema, the same dict as tests/reference/open_lm.TINY_CONFIG (a test keeps
# them equal): gain-only LayerNorms, QK LayerNorm over the full width, fused in_proj and w12,
# untied head.
TINY_CONFIG = {
    "architectures": ["OpenLMForCausalLM"], "model_type": "openlm", "dim": 64, "n_layers": 3, "n_heads": 4,
    "vocab_size": 512, "norm_eps": 1e-5, "seq_len": 256, "post_embed_norm": False, "weight_tying": False,
    "norm_type": "gain_only_lp_layer_norm", "apply_qk_norm": True, "qk_norm": True,
    "positional_embedding_type": "rotary", "ffn_type": "swiglu_torch", "attn_name": "torch_attn",
    "attn_activation": None, "moe_freq": 0,
}


def shrink_to_tiny(config: dict) -> dict:
    return {**config, **{key: TINY_CONFIG[key] for key in ("dim", "n_layers", "n_heads", "seq_len")}}


register(Family(
    name="open_lm",
    architectures=("OpenLMForCausalLM", "OpenLMModel"),
    spec_from_config=spec_from_config,
    convert_weights=convert_weights,
    tiny_config=TINY_CONFIG,
    shrink_to_tiny=shrink_to_tiny,
    model_types=("openlm",),
    checkpoint_shapes=checkpoint_shapes,
))
