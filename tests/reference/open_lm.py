"""open_lm transformers (DCLM: TRI-ML/DCLM-1B, apple/DCLM-7B), ARCHITECTURES.md §14.

Transcribed from the published architecture:
  h = tok_embeddings[ids]                                       (post_embed_norm: off in DCLM)
  per layer:
      [q | k | v] = attention_norm(h) @ W_in^T                  (W_in [3d, d]: contiguous d-wide blocks, Q first)
      q, k = q_norm(q), k_norm(k)                               (the layer's norm kind over all d lanes at once)
      q, k, v viewed [B,T,H,hd];  q, k = rope(q), rope(k)        (half-split, theta 10000 fixed)
      h = h + out_proj(causal attention, scale hd^-1/2)
      [g ; u] = w12(ffn_norm(h));  h = h + w3(silu(g) * u)       (hidden = 256 * ceil(int(8d/3) / 256))
  logits = float(output(norm(h)))
Norm kinds (`norm_type`, `model_norm` in the nested layout): gain_only_(lp_)layer_norm = LayerNorm
with weight, no bias (DCLM); (default_|lp_)layer_norm = weight and bias; no_wb_layer_norm = neither;
rms_norm. The "lp" variants differ only under autocast. Two config layouts: flat (current
revisions) and nested under `params_args_dict` (early revisions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import check_state, randomize

NORM_KINDS = {
    # kind: (has weight, has bias, rms)
    "default_layer_norm": (True, True, False),
    "lp_layer_norm": (True, True, False),
    "gain_only_layer_norm": (True, False, False),
    "gain_only_lp_layer_norm": (True, False, False),
    "no_wb_layer_norm": (False, False, False),
    "rms_norm": (True, False, True),
}
ROPE_THETA = 10000.0  # fixed in open_lm's rotary embedding

# DCLM-1B's schema (flat layout) at a tiny size; every 1-D weight random, so a gain applied
# to the wrong tensor shows.
TINY_CONFIG = {
    "architectures": ["OpenLMForCausalLM"],
    "model_type": "openlm",
    "dim": 64,
    "n_layers": 3,
    "n_heads": 4,
    "vocab_size": 512,
    "norm_eps": 1e-5,
    "seq_len": 256,
    "post_embed_norm": False,
    "weight_tying": False,
    "norm_type": "gain_only_lp_layer_norm",
    "apply_qk_norm": True,
    "qk_norm": True,
    "positional_embedding_type": "rotary",
    "ffn_type": "swiglu_torch",
    "attn_name": "torch_attn",
    "attn_activation": None,
    "moe_freq": 0,
}


def nested(config: dict) -> dict:
    """The same model in the early layout: every key under params_args_dict, with
    `model_norm` for the norm kind (TRI-ML/DCLM-1B-v0, mlfoundations/dclm-7b-it)."""
    args = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "norm_type")}
    args["model_norm"] = config["norm_type"]
    args["model"] = "open_lm_tiny"
    return {"architectures": ["OpenLMModel"], "model_type": "openlm", "params": None,
            "params_args_dict": args, "torch_dtype": "float32"}


def params(config: dict) -> dict:
    """The model parameters a config describes, in either layout."""
    if config.get("params_args_dict"):
        src = config["params_args_dict"]
        norm = src.get("model_norm", src.get("norm_type"))
        qk = src.get("qk_norm", src.get("apply_qk_norm", False))
    else:
        src = config
        norm = src.get("norm_type", "default_layer_norm")  # open_lm's Params default: nn.LayerNorm
        qk = src.get("apply_qk_norm", False)
    if norm not in NORM_KINDS:
        raise ValueError(f"norm kind {norm!r} is not one of {', '.join(NORM_KINDS)}")
    ffn = src.get("ffn_type", "swiglu")
    if ffn not in ("swiglu", "swiglu_torch"):
        raise ValueError(f"ffn_type {ffn!r}: this reference covers swiglu / swiglu_torch (DCLM)")
    if src.get("positional_embedding_type", "rotary") != "rotary":
        raise ValueError("this reference covers positional_embedding_type 'rotary' only")
    if src.get("moe_freq", 0):
        raise ValueError("mixture-of-experts open_lm models are not covered")
    if src.get("attn_name", "auto") not in ("auto", "torch_attn", "xformers_attn") or src.get("attn_activation"):
        raise ValueError("this reference covers softmax attention (attn_name auto/torch_attn/xformers_attn)")
    dim = src.get("dim", src.get("hidden_dim"))
    return {
        "dim": dim,
        "layers": src["n_layers"],
        "heads": src["n_heads"],
        "head_dim": dim // src["n_heads"],
        "vocab": src["vocab_size"],
        "eps": float(src.get("norm_eps", 1e-5)),
        "norm": norm,
        "qk_norm": bool(qk),
        "post_embed_norm": bool(src.get("post_embed_norm", False)),
        "tied": bool(src.get("weight_tying", False)),
        # ref: open_lm model.py Block: llama's 8d/3, rounded up to a multiple of 256
        "hidden": 256 * ((int(2 * 4 * dim / 3) + 256 - 1) // 256),
    }


def _norm_shapes(prefix: str, kind: str, dim: int) -> dict:
    weight, bias, _ = NORM_KINDS[kind]
    return {**({prefix + "weight": (dim,)} if weight else {}), **({prefix + "bias": (dim,)} if bias else {})}


def checkpoint_shapes(config: dict, buffers: bool = False) -> dict[str, tuple[int, ...]]:
    """Weight names and shapes; with `buffers`, also each layer's rotary `inv_freq`, which
    open_lm registers as a persistent buffer (so a saved state dict carries it)."""
    p = params(config)
    d, kind = p["dim"], p["norm"]
    shapes = {"model.tok_embeddings.weight": (p["vocab"], d)}
    if p["post_embed_norm"]:
        shapes.update(_norm_shapes("model.post_embed_norm.", kind, d))
    for i in range(p["layers"]):
        pre = f"model.layers.{i}."
        shapes[pre + "attention.in_proj.weight"] = (3 * d, d)
        shapes[pre + "attention.out_proj.weight"] = (d, d)
        if p["qk_norm"]:
            shapes.update(_norm_shapes(pre + "attention.q_norm.", kind, d))
            shapes.update(_norm_shapes(pre + "attention.k_norm.", kind, d))
        if buffers:
            shapes[pre + "attention.pos_embed.inv_freq"] = (p["head_dim"] // 2,)
        shapes[pre + "feed_forward.w12.weight"] = (2 * p["hidden"], d)
        shapes[pre + "feed_forward.w3.weight"] = (d, p["hidden"])
        shapes.update(_norm_shapes(pre + "attention_norm.", kind, d))
        shapes.update(_norm_shapes(pre + "ffn_norm.", kind, d))
    shapes.update(_norm_shapes("model.norm.", kind, d))
    if not p["tied"]:
        shapes["model.output.weight"] = (p["vocab"], d)
    return shapes


def inv_freq(head_dim: int) -> torch.Tensor:
    return 1.0 / (ROPE_THETA ** (torch.arange(0, head_dim, 2).float() / head_dim))


def random_state_dict(config: dict, seed: int = 0, std: float = 0.08) -> dict[str, torch.Tensor]:
    """Random weights, plus the rotary buffers with their true values."""
    shapes = checkpoint_shapes(config, buffers=True)
    state = randomize(shapes, seed, std)
    for name in shapes:
        if name.endswith("pos_embed.inv_freq"):
            state[name] = inv_freq(params(config)["head_dim"])
    return state


def norm(x, w: dict, prefix: str, kind: str, eps: float):
    weight, bias = w.get(prefix + "weight"), w.get(prefix + "bias")
    if NORM_KINDS[kind][2]:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def rope(x, positions, freq_dtype=None):
    """x [B,T,H,hd] (open_lm's head layout), half-split over all of hd. open_lm casts the
    inverse frequencies to the q/k dtype before the fp32 outer product (`freq_dtype` None):
    fp32 frequencies in an fp32 run, bf16-rounded ones in a bf16 run and under the bf16
    autocast DCLM was trained with; `freq_dtype=torch.bfloat16` reproduces the latter at fp32."""
    hd = x.shape[-1]
    angles = torch.outer(positions.float(), inv_freq(hd).to(freq_dtype or x.dtype))
    angles = torch.cat([angles, angles], dim=-1)
    cos, sin = angles.cos()[None, :, None, :].to(x.dtype), angles.sin()[None, :, None, :].to(x.dtype)
    rotated = torch.cat([-x[..., hd // 2 :], x[..., : hd // 2]], dim=-1)
    return x * cos + rotated * sin


class Reference:
    def __init__(self, config: dict, state: dict[str, torch.Tensor], rope_freq_dtype: torch.dtype | None = None):
        self.rope_freq_dtype = rope_freq_dtype
        self.config = dict(config)
        self.p = p = params(config)
        expected = checkpoint_shapes(config)
        buffers = {k: v for k, v in checkpoint_shapes(config, buffers=True).items() if k not in expected}
        optional = dict(buffers)
        if p["tied"]:
            optional["model.output.weight"] = (p["vocab"], p["dim"])
        check_state(state, expected, optional)
        for name in buffers:
            if name in state and not torch.allclose(state[name].float(), inv_freq(p["head_dim"]), rtol=1e-6, atol=0):
                raise ValueError(f"{name} is not the rotary inverse frequencies of theta {ROPE_THETA}")
        self.w = {k: v.float() for k, v in state.items() if k not in buffers}

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        w, p = self.w, self.p
        b, t = input_ids.shape
        kind, eps, heads, hd = p["norm"], p["eps"], p["heads"], p["head_dim"]
        positions = torch.arange(t)
        h = F.embedding(input_ids, w["model.tok_embeddings.weight"])
        if p["post_embed_norm"]:
            h = norm(h, w, "model.post_embed_norm.", kind, eps)
        for i in range(p["layers"]):
            pre = f"model.layers.{i}."
            x = norm(h, w, pre + "attention_norm.", kind, eps)
            q, k, v = F.linear(x, w[pre + "attention.in_proj.weight"]).chunk(3, dim=-1)
            if p["qk_norm"]:
                q = norm(q, w, pre + "attention.q_norm.", kind, eps)
                k = norm(k, w, pre + "attention.k_norm.", kind, eps)
            q, k, v = (y.reshape(b, t, heads, hd) for y in (q, k, v))
            q, k = rope(q, positions, self.rope_freq_dtype), rope(k, positions, self.rope_freq_dtype)
            a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
            h = h + F.linear(a.transpose(1, 2).reshape(b, t, heads * hd), w[pre + "attention.out_proj.weight"])
            m = norm(h, w, pre + "ffn_norm.", kind, eps)
            gate, up = F.linear(m, w[pre + "feed_forward.w12.weight"]).chunk(2, dim=-1)
            h = h + F.linear(F.silu(gate) * up, w[pre + "feed_forward.w3.weight"])
        h = norm(h, w, "model.norm.", kind, eps)
        head = w["model.tok_embeddings.weight"] if p["tied"] else w["model.output.weight"]
        return F.linear(h, head).float()

    __call__ = forward
