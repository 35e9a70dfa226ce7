"""The one export-friendly decoder, parameterized by a DecoderSpec.

The decoder owns weights and the math of one forward pass. It does not own a KV cache:
each target wraps it and passes an `attend` callable that stores k/v the way its runtime
wants (ExecuTorch custom ops, ONNX past/present tensors, Core ML state buffers) and
returns the attention output. `full_causal_attention` is the cache-free version used for
stage-1 parity.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mobilekit.modeling.spec import DecoderSpec, LongRopeScaling

# attend(layer_index, q[B,T,H,hd], k[B,T,KV,hd], v[B,T,KV,hd]) -> out[B,T,H*hd]
Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ref: ARCHITECTURES.md §0.1, Llama style: normalize in fp32, cast back, then scale.
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def rotary_inv_freq(spec: DecoderSpec) -> torch.Tensor:
    rot = spec.head_dim
    inv_freq = 1.0 / (spec.rope_theta ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot))
    s = spec.rope_scaling
    if isinstance(s, LongRopeScaling):
        # ref: transformers modeling_rope_utils._compute_longrope_parameters; exports stop at
        # original_max_position_embeddings (DecoderSpec.max_exportable_context): short factors.
        inv_freq = inv_freq / torch.tensor(s.short_factor, dtype=torch.float64)
    elif s is not None:
        # ref: transformers modeling_rope_utils._compute_llama3_parameters (ARCHITECTURES.md §2)
        low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
        high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
        smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
            s.high_freq_factor - s.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = torch.where(medium, smoothed, scaled)
    return inv_freq.float()


def rotary_tables(spec: DecoderSpec, max_seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, [max_seq_len, head_dim], HF half-split layout (ARCHITECTURES.md §0.2)."""
    positions = torch.arange(max_seq_len, dtype=torch.float32)
    angles = torch.outer(positions, rotary_inv_freq(spec))
    angles = torch.cat([angles, angles], dim=-1)
    scale = rotary_attention_factor(spec)
    return angles.cos() * scale, angles.sin() * scale


def rotary_attention_factor(spec: DecoderSpec) -> float:
    """The factor transformers multiplies cos and sin by (LongRoPE's; 1 otherwise)."""
    return spec.rope_scaling.attention_factor if isinstance(spec.rope_scaling, LongRopeScaling) else 1.0


class Rotary(nn.Module):
    """Rotary embedding of q or k. A module (not a function) so a target can swap in a
    formulation its backend keeps in one fused partition."""

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x [B,T,heads,hd]; cos/sin [T,1,hd]
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin


_ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


class Attention(nn.Module):
    def __init__(self, spec: DecoderSpec):
        super().__init__()
        d, hd = spec.hidden_size, spec.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = spec.num_heads, spec.num_kv_heads, hd
        self.q_proj = nn.Linear(d, spec.num_heads * hd, bias=spec.qkv_bias)
        self.k_proj = nn.Linear(d, spec.num_kv_heads * hd, bias=spec.qkv_bias)
        self.v_proj = nn.Linear(d, spec.num_kv_heads * hd, bias=spec.qkv_bias)
        self.o_proj = nn.Linear(spec.num_heads * hd, d, bias=spec.output_bias)
        self.rotary = Rotary()

    def forward(self, layer_index, x, cos, sin, attend: Attend):
        # -1 rather than the symbolic length: backends (XNNPACK) reject symbolic reshapes
        b = x.shape[0]
        q = self.q_proj(x).view(b, -1, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(b, -1, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, -1, self.num_kv_heads, self.head_dim)
        q, k = self.rotary(q, cos, sin), self.rotary(k, cos, sin)
        return self.o_proj(attend(layer_index, q, k, v))


class GatedMLP(nn.Module):
    def __init__(self, spec: DecoderSpec):
        super().__init__()
        d, inter = spec.hidden_size, spec.intermediate_size
        self.gate_proj = nn.Linear(d, inter, bias=spec.mlp_bias)
        self.up_proj = nn.Linear(d, inter, bias=spec.mlp_bias)
        self.down_proj = nn.Linear(inter, d, bias=spec.mlp_bias)
        self.act = _ACTIVATIONS[spec.activation]

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, spec: DecoderSpec):
        super().__init__()
        self.input_norm = RMSNorm(spec.hidden_size, spec.norm_eps)
        self.attention = Attention(spec)
        self.post_attention_norm = RMSNorm(spec.hidden_size, spec.norm_eps)
        self.mlp = GatedMLP(spec)

    def forward(self, layer_index, h, cos, sin, attend: Attend):
        h = h + self.attention(layer_index, self.input_norm(h), cos, sin, attend)
        return h + self.mlp(self.post_attention_norm(h))


class Decoder(nn.Module):
    """Embedding -> N pre-norm layers -> final norm -> lm head."""

    def __init__(self, spec: DecoderSpec):
        super().__init__()
        self.spec = spec
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(spec) for _ in range(spec.num_layers))
        self.norm = RMSNorm(spec.hidden_size, spec.norm_eps)
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        if spec.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(self, input_ids, cos, sin, attend: Attend, last_only: bool = False):
        """input_ids [B,T]; cos/sin [T,hd] for the positions of those tokens."""
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # once, broadcast over heads in every layer
        h = self.embed_tokens(input_ids)
        for i, layer in enumerate(self.layers):
            h = layer(i, h, cos, sin, attend)
        h = self.norm(h)
        if last_only:
            h = h[:, -1, :]
        return self.lm_head(h)


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B,KV,S,hd] -> [B,KV*groups,S,hd]; query head h reads kv head h // groups."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def causal_attention(q, k, v, mask, scale):
    """q [B,T,H,hd], k/v [B,S,KV,hd] (S >= T), additive or boolean mask [T,S] -> [B,T,H*hd]."""
    b, t, h, hd = q.shape
    groups = h // k.shape[2]
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    k, v = repeat_kv(k, groups), repeat_kv(v, groups)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(b, t, h * hd)


class EagerDecoder(nn.Module):
    """The decoder with full causal attention and no cache: stage-1 parity and references."""

    def __init__(self, decoder: Decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        cos, sin = rotary_tables(self.decoder.spec, t)
        mask = torch.ones(t, t, dtype=torch.bool).tril()
        window = self.decoder.spec.sliding_window
        if window is not None:
            mask = mask & ~torch.ones(t, t, dtype=torch.bool).tril(-window)
        scale = self.decoder.spec.attention_scale

        def attend(_, q, k, v):
            return causal_attention(q, k, v, mask, scale)

        return self.decoder(input_ids, cos, sin, attend)
