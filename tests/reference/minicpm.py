"""MiniCPM (v1/v2: openbmb/MiniCPM-1B-sft-bf16, MiniCPM-2B-sft-bf16), ARCHITECTURES.md §12.

A Llama with three muP scales, transcribed from the published architecture:
  h = E[ids] * scale_emb
  per layer, alpha = scale_depth / sqrt(num_hidden_layers):
      h = h + alpha * o_proj(attn(rms_in(h)))
      h = h + alpha * down(silu(gate(m)) * up(m)),  m = rms_post(h)
  logits = (rms_final(h) / (hidden_size / dim_model_base)) @ W_head^T   (W_head = E when tied)
RoPE is applied in float32 (q and k upcast, rotated, cast back), half-split, full head_dim.
Weight names are Llama's (`model.embed_tokens.weight`, `model.layers.{i}.self_attn.q_proj.weight`,
...); a tied checkpoint stores no `lm_head.weight` (one that does is accepted, and ignored).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import check_state, randomize

# Config keys read, with the remote configuration class's defaults (ARCHITECTURES.md §12).
DEFAULTS = {"scale_emb": 1, "dim_model_base": 1, "scale_depth": 1, "tie_word_embeddings": True,
            "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu", "rope_scaling": None,
            "attention_bias": False}

# Every muP scale away from 1 (so a missing one shows), GQA 4/2, tied head.
TINY_CONFIG = {
    "architectures": ["MiniCPMForCausalLM"],
    "model_type": "minicpm",
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "hidden_act": "silu",
    "scale_emb": 12,
    "dim_model_base": 32,
    "scale_depth": 1.4,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def _get(config: dict, key: str):
    """config[key], or the remote config class's default when the key is absent or null."""
    value = config.get(key)
    return DEFAULTS.get(key) if value is None else value


def sizes(config: dict) -> dict:
    heads = config["num_attention_heads"]
    return {
        "d": config["hidden_size"],
        "layers": config["num_hidden_layers"],
        "heads": heads,
        "kv_heads": config.get("num_key_value_heads") or heads,
        "head_dim": config["hidden_size"] // heads,
        "inter": config["intermediate_size"],
        "vocab": config["vocab_size"],
        "tied": bool(_get(config, "tie_word_embeddings")),
    }


def checkpoint_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    s = sizes(config)
    d, hd = s["d"], s["head_dim"]
    shapes = {"model.embed_tokens.weight": (s["vocab"], d), "model.norm.weight": (d,)}
    for i in range(s["layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (s["heads"] * hd, d),
            p + "self_attn.k_proj.weight": (s["kv_heads"] * hd, d),
            p + "self_attn.v_proj.weight": (s["kv_heads"] * hd, d),
            p + "self_attn.o_proj.weight": (d, s["heads"] * hd),
            p + "post_attention_layernorm.weight": (d,),
            p + "mlp.gate_proj.weight": (s["inter"], d),
            p + "mlp.up_proj.weight": (s["inter"], d),
            p + "mlp.down_proj.weight": (d, s["inter"]),
        })
    if not s["tied"]:
        shapes["lm_head.weight"] = (s["vocab"], d)
    return shapes


def random_state_dict(config: dict, seed: int = 0, std: float = 0.08) -> dict[str, torch.Tensor]:
    return randomize(checkpoint_shapes(config), seed, std)


def rms_norm(x, weight, eps):
    # normalize in fp32, cast back to the input dtype, then scale (ARCHITECTURES.md §0.1)
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def rope_fp32(x, positions, theta):
    """x [B,H,T,hd] rotated half-split over all of hd, computed in fp32, cast back."""
    hd = x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    angles = torch.outer(positions.float(), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    cos, sin = angles.cos(), angles.sin()
    x32 = x.float()
    x1, x2 = x32[..., : hd // 2], x32[..., hd // 2 :]
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x32 * cos + rotated * sin).to(x.dtype)


def causal_attention(q, k, v):
    """q [B,H,T,hd], k/v [B,KV,T,hd]; query head h reads kv head h // (H/KV); fp32 softmax."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    t = q.shape[2]
    scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    future = torch.ones(t, t, dtype=torch.bool).triu(1)
    scores = scores.masked_fill(future, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return probs @ v


class Reference:
    def __init__(self, config: dict, state: dict[str, torch.Tensor]):
        if _get(config, "rope_scaling"):
            raise ValueError("this reference covers MiniCPM v1/v2 without rope scaling")
        if _get(config, "attention_bias"):
            raise ValueError("this reference covers MiniCPM checkpoints without attention biases")
        if _get(config, "hidden_act") not in ("silu", "swish"):
            raise ValueError(f"activation {config['hidden_act']!r} is not MiniCPM's silu")
        self.config = dict(config)
        self.s = sizes(config)
        expected = checkpoint_shapes(config)
        optional = {"lm_head.weight": (self.s["vocab"], self.s["d"])} if self.s["tied"] else {}
        check_state(state, expected, optional)
        self.w = {k: v.float() for k, v in state.items()}
        self.eps = float(_get(config, "rms_norm_eps"))
        self.theta = float(_get(config, "rope_theta"))
        self.scale_emb = float(_get(config, "scale_emb"))
        self.alpha = float(_get(config, "scale_depth")) / math.sqrt(self.s["layers"])
        self.width_ratio = self.s["d"] / float(_get(config, "dim_model_base"))

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        w, s = self.w, self.s
        b, t = input_ids.shape
        hd = s["head_dim"]
        positions = torch.arange(t)
        h = F.embedding(input_ids, w["model.embed_tokens.weight"]) * self.scale_emb
        for i in range(s["layers"]):
            p = f"model.layers.{i}."
            x = rms_norm(h, w[p + "input_layernorm.weight"], self.eps)
            q = F.linear(x, w[p + "self_attn.q_proj.weight"]).view(b, t, s["heads"], hd).transpose(1, 2)
            k = F.linear(x, w[p + "self_attn.k_proj.weight"]).view(b, t, s["kv_heads"], hd).transpose(1, 2)
            v = F.linear(x, w[p + "self_attn.v_proj.weight"]).view(b, t, s["kv_heads"], hd).transpose(1, 2)
            q, k = rope_fp32(q, positions, self.theta), rope_fp32(k, positions, self.theta)
            a = causal_attention(q, k, v).transpose(1, 2).reshape(b, t, s["heads"] * hd)
            h = h + F.linear(a, w[p + "self_attn.o_proj.weight"]) * self.alpha
            m = rms_norm(h, w[p + "post_attention_layernorm.weight"], self.eps)
            gate = F.silu(F.linear(m, w[p + "mlp.gate_proj.weight"]))
            up = F.linear(m, w[p + "mlp.up_proj.weight"])
            h = h + F.linear(gate * up, w[p + "mlp.down_proj.weight"]) * self.alpha
        h = rms_norm(h, w["model.norm.weight"], self.eps)
        head = w["model.embed_tokens.weight"] if s["tied"] else w["lm_head.weight"]
        return F.linear(h / self.width_ratio, head).float()

    __call__ = forward
