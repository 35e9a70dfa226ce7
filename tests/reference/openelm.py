"""OpenELM (apple/OpenELM-270M/450M/1_1B/3B and -Instruct), ARCHITECTURES.md §13.

Layer-wise scaling, transcribed from the published architecture:
  qkv_mult = round(linspace(q0, q1, L), 2)
  q_dim[l] = make_divisible(model_dim * qkv_mult[l], head_dim * num_gqa_groups)
  Hq[l] = q_dim[l] / head_dim;  Hkv[l] = Hq[l] / num_gqa_groups      (num_gqa_groups = query heads per kv head)
  ffn_mult = the stored per-layer list (or round(linspace(f0, f1, L), 2) from two ends)
  F[l] = make_divisible(ffn_mult[l] * model_dim, ffn_dim_divisor)
Forward, per layer l (RMSNorms are Llama style, eps 1e-6, no config key):
  qkv = rms_attn(h) @ W_qkv^T, viewed [B,T,Hq+2Hkv,hd]: Hq query heads, then Hkv key heads, then Hkv value heads
  q, k = rms_q(q), rms_k(k)        (over hd, one [hd] weight shared by all heads)
  q, k = rope(q), rope(k)          (fp32, half-split, theta = rope_freq_constant; positions 0..T-1)
  h = h + out_proj(attention(q, k, v))       (GQA by repeat_interleave, scale hd^-1/2, causal)
  [y1 ; y2] = proj_1(rms_ffn(h));  h = h + proj_2(act(y1) * y2)      (first half is the gate)
  logits = rms_final(h) @ token_embeddings^T  (share_input_output_layers)
The per-layer head counts stored in config.json (num_query_heads / num_kv_heads) are ignored,
as the remote configuration class recomputes them.
"""

from __future__ import annotations

from numbers import Number

import numpy as np
import torch
import torch.nn.functional as F

from . import check_state, randomize

EPS = 1e-6  # OpenELMRMSNorm's default; every norm of the model uses it

ACTIVATIONS = {"swish": F.silu, "silu": F.silu, "gelu": F.gelu,
               "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu}


def make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    """Round v to a multiple of divisor (nearest, at least min_value = divisor), then add one
    more divisor if that rounded down by more than 10%."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return int(new_v)


def _per_layer_multipliers(value, layers: int, what: str) -> list[float]:
    if isinstance(value, Number):
        return [value] * layers
    value = list(value)
    if len(value) == 2:
        # numpy scalars and their round(), exactly as the configuration class computes them
        return [round(v, 2) for v in np.linspace(value[0], value[1], num=layers, dtype=float)]
    if len(value) == layers:
        return value
    raise ValueError(f"{what} must be a number, two ends, or one value per layer ({layers}); got {value}")


def layer_sizes(config: dict) -> list[dict]:
    """[{"q_heads", "kv_heads", "ffn_dim"}] per layer."""
    layers, model_dim, hd = config["num_transformer_layers"], config["model_dim"], config["head_dim"]
    groups = config["num_gqa_groups"]
    qkv = config.get("qkv_multipliers", 1.0)
    if isinstance(qkv, Number):
        q_dims = [make_divisible(model_dim * qkv, hd * groups)] * layers
    elif len(qkv) == 2:
        q_dims = [make_divisible(model_dim * m, hd * groups) for m in _per_layer_multipliers(qkv, layers, "qkv")]
    else:
        raise ValueError(f"qkv_multipliers must be a number or two ends; got {qkv}")
    ffn = _per_layer_multipliers(config.get("ffn_multipliers", 4.0), layers, "ffn_multipliers")
    out = []
    for q_dim, mult in zip(q_dims, ffn):
        if q_dim % hd:
            raise ValueError(f"query width {q_dim} is not a multiple of head_dim {hd}")
        q_heads = q_dim // hd
        out.append({"q_heads": q_heads, "kv_heads": q_heads // groups,
                    "ffn_dim": make_divisible(mult * model_dim, config.get("ffn_dim_divisor", 256))})
    return out


def _tiny_config() -> dict:
    config = {
        "architectures": ["OpenELMForCausalLM"],
        "model_type": "openelm",
        "vocab_size": 512,
        "max_context_length": 256,
        "num_transformer_layers": 4,
        "model_dim": 64,
        "head_dim": 16,
        "num_gqa_groups": 2,
        "qkv_multipliers": [0.5, 1.0],
        # stored expanded per layer, as the real config.json files store them
        "ffn_multipliers": [float(m) for m in _per_layer_multipliers([0.5, 4.0], 4, "ffn_multipliers")],
        "ffn_with_glu": True,
        "ffn_dim_divisor": 32,
        "activation_fn_name": "swish",
        "normalization_layer_name": "rms_norm",
        "normalize_qk_projections": True,
        "share_input_output_layers": True,
        "rope_freq_constant": 10000,
        "rope_max_length": 512,
        "initializer_range": 0.02,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    sizes = layer_sizes(config)
    config["num_query_heads"] = [s["q_heads"] for s in sizes]
    config["num_kv_heads"] = [s["kv_heads"] for s in sizes]
    return config


# Per-layer heads 2/4/4/4 (kv 1/2/2/2: MQA then GQA, and out_proj [64, 32] in layer 0),
# FFN 32/128/192/256, q/k norms, shared embeddings.
TINY_CONFIG = _tiny_config()


def checkpoint_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    d, hd, vocab = config["model_dim"], config["head_dim"], config["vocab_size"]
    glu = config.get("ffn_with_glu", True)
    shapes = {"transformer.token_embeddings.weight": (vocab, d), "transformer.norm.weight": (d,)}
    for i, s in enumerate(layer_sizes(config)):
        p = f"transformer.layers.{i}."
        shapes.update({
            p + "attn_norm.weight": (d,),
            p + "attn.qkv_proj.weight": ((s["q_heads"] + 2 * s["kv_heads"]) * hd, d),
            p + "attn.out_proj.weight": (d, s["q_heads"] * hd),
            p + "ffn_norm.weight": (d,),
            p + "ffn.proj_1.weight": ((2 if glu else 1) * s["ffn_dim"], d),
            p + "ffn.proj_2.weight": (d, s["ffn_dim"]),
        })
        if config.get("normalize_qk_projections", False):
            shapes[p + "attn.q_norm.weight"] = (hd,)
            shapes[p + "attn.k_norm.weight"] = (hd,)
    if not config.get("share_input_output_layers", False):
        # the unshared head is `lm_head`; the remote model also builds an unused
        # `transformer.classifier` of the same shape (accepted, ignored)
        shapes["lm_head.weight"] = (vocab, d)
    return shapes


def random_state_dict(config: dict, seed: int = 0, std: float = 0.08) -> dict[str, torch.Tensor]:
    return randomize(checkpoint_shapes(config), seed, std)


def rms_norm(x, weight, eps=EPS):
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return normed.to(x.dtype) * weight


def rope_fp32(x, positions, theta):
    """x [B,heads,T,hd], half-split rotation over all of hd in fp32, cast back."""
    hd = x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    angles = torch.outer(positions.to(torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    x32 = x.float()
    rotated = torch.cat([-x32[..., hd // 2 :], x32[..., : hd // 2]], dim=-1)
    return (x32 * angles.cos() + rotated * angles.sin()).to(x.dtype)


class Reference:
    def __init__(self, config: dict, state: dict[str, torch.Tensor]):
        if config.get("normalization_layer_name", "rms_norm") != "rms_norm":
            raise ValueError("the published OpenELM modeling code only has RMSNorm")
        if config.get("activation_fn_name", "swish") not in ACTIVATIONS:
            raise ValueError(f"activation {config['activation_fn_name']!r} is not supported here")
        self.config = dict(config)
        self.sizes = layer_sizes(config)
        expected = checkpoint_shapes(config)
        optional = {}
        if "lm_head.weight" in expected:
            optional["transformer.classifier.weight"] = expected["lm_head.weight"]
        check_state(state, expected, optional)
        self.w = {k: v.float() for k, v in state.items()}
        self.act = ACTIVATIONS[config.get("activation_fn_name", "swish")]
        self.theta = float(config.get("rope_freq_constant", 10000))

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        w, cfg = self.w, self.config
        b, t = input_ids.shape
        hd = cfg["head_dim"]
        positions = torch.arange(t)
        h = F.embedding(input_ids, w["transformer.token_embeddings.weight"])
        for i, s in enumerate(self.sizes):
            p = f"transformer.layers.{i}."
            hq, hkv = s["q_heads"], s["kv_heads"]
            x = rms_norm(h, w[p + "attn_norm.weight"])
            qkv = F.linear(x, w[p + "attn.qkv_proj.weight"]).reshape(b, t, hq + 2 * hkv, hd).transpose(1, 2)
            q, k, v = qkv.split([hq, hkv, hkv], dim=1)
            if cfg.get("normalize_qk_projections", False):
                q = rms_norm(q, w[p + "attn.q_norm.weight"])
                k = rms_norm(k, w[p + "attn.k_norm.weight"])
            q, k = rope_fp32(q, positions, self.theta), rope_fp32(k, positions, self.theta)
            k = k.repeat_interleave(hq // hkv, dim=1)
            v = v.repeat_interleave(hq // hkv, dim=1)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            a = a.transpose(1, 2).reshape(b, t, hq * hd)
            h = h + F.linear(a, w[p + "attn.out_proj.weight"])
            y = F.linear(rms_norm(h, w[p + "ffn_norm.weight"]), w[p + "ffn.proj_1.weight"])
            if cfg.get("ffn_with_glu", True):
                y1, y2 = y.chunk(2, dim=-1)
                y = self.act(y1) * y2
            else:
                y = self.act(y)
            h = h + F.linear(y, w[p + "ffn.proj_2.weight"])
        h = rms_norm(h, w["transformer.norm.weight"])
        if cfg.get("share_input_output_layers", False):
            return F.linear(h, w["transformer.token_embeddings.weight"]).float()
        return F.linear(h, w["lm_head.weight"]).float()

    __call__ = forward
