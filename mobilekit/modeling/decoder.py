"""The one export-friendly decoder, parameterized by a DecoderSpec.

The decoder owns weights and the math of one forward pass. It does not own a KV cache:
each target wraps it and passes an `attend` callable that stores k/v the way its runtime
wants (ExecuTorch custom ops, ONNX past/present tensors, Core ML state buffers) and
returns the attention output; `attend` reads the layer's sliding window and softcap from
the spec (`spec.layer_window(i)`, `spec.attention_softcap`), and `attention_mask` /
`attention` below are the reference forms of both. The target also supplies the rotary
cos/sin of the token positions, one pair per table kind (`spec.rope_kinds`).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mobilekit.modeling.spec import DecoderSpec, LongRopeScaling

# attend(layer_index, q[B,T,H,hd], k[B,T,KV,hd], v[B,T,KV,hd]) -> out[B,T,H*hd]
Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# convolve(layer_index, x[B,T,C], conv: CausalConv) -> out[B,T,C]: the target hands the
# layer's stored state to `conv(x, past)` and keeps the state it returns.
Convolve = Callable[[int, torch.Tensor, "CausalConv"], torch.Tensor]
# recur(layer_index, q, k [B,T,Hv,dk], v [B,T,Hv,dv], g, beta [B,T,Hv]) -> out [B,T,Hv,dv]:
# the target hands the layer's stored matrix state to `gated_delta_rule` and keeps the one
# it returns.
Recur = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


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


class UnscaledRMSNorm(nn.Module):
    """RMSNorm with no weight (Gemma 3n's v_norm)."""

    def __init__(self, eps: float):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def rotary_inv_freq(spec: DecoderSpec, kind: str = "global") -> torch.Tensor:
    """Inverse frequencies of rotary table `kind` ("global", or Gemma 3's "local")."""
    rot = spec.rotary_width
    theta = spec.rope_theta_local if kind == "local" else spec.rope_theta
    inv_freq = 1.0 / (theta ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot))
    s = spec.rope_scaling
    if kind == "local" or s is None:
        return inv_freq.float()
    if isinstance(s, LongRopeScaling):
        # ref: transformers modeling_rope_utils._compute_longrope_parameters; exports stop at
        # original_max_position_embeddings (DecoderSpec.max_exportable_context): short factors.
        inv_freq = inv_freq / torch.tensor(s.short_factor, dtype=torch.float64)
    else:
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


def rotary_attention_factor(spec: DecoderSpec, kind: str = "global") -> float:
    """The factor transformers multiplies cos and sin by (LongRoPE's; 1 otherwise)."""
    if kind == "global" and isinstance(spec.rope_scaling, LongRopeScaling):
        return spec.rope_scaling.attention_factor
    return 1.0


def rotary_cos_sin(spec: DecoderSpec, positions: torch.Tensor, kind: str = "global"):
    """cos and sin [len(positions), rotary_width] of table `kind`, HF half-split layout
    (ARCHITECTURES.md §0.2). Computed in the graph by targets that want no stored table."""
    angles = torch.outer(positions.float(), rotary_inv_freq(spec, kind).to(positions.device))
    angles = torch.cat([angles, angles], dim=-1)
    scale = rotary_attention_factor(spec, kind)
    cos, sin = angles.cos(), angles.sin()
    return (cos * scale, sin * scale) if scale != 1.0 else (cos, sin)


def rotary_tables(spec: DecoderSpec, max_seq_len: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{kind: (cos, sin)} for positions 0..max_seq_len-1, one pair per `spec.rope_kinds`;
    a target slices or gathers the rows of its token positions."""
    positions = torch.arange(max_seq_len)
    return {kind: rotary_cos_sin(spec, positions, kind) for kind in spec.rope_kinds}


def select_rows(tables: dict, rows) -> dict:
    """The same rows (a slice or an index tensor) of every (cos, sin) table."""
    if isinstance(rows, torch.Tensor):
        return {k: (c.index_select(0, rows), s.index_select(0, rows)) for k, (c, s) in tables.items()}
    return {k: (c[rows], s[rows]) for k, (c, s) in tables.items()}


class Rotary(nn.Module):
    """Rotary embedding of q or k. A module (not a function) so a target can swap in a
    formulation its backend keeps in one fused partition."""

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x [B,T,heads,hd]; cos/sin [T,1,r]: the first r lanes rotate (half-split within
        # them), the rest pass through (partial rotary: GPT-NeoX, Phi-2, StableLM).
        r = cos.shape[-1]
        if r == x.shape[-1]:
            return _rotate(x, cos, sin)
        return torch.cat([_rotate(x[..., :r], cos, sin), x[..., r:]], dim=-1)


def _rotate(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class LayerNorm(nn.LayerNorm):
    """LayerNorm with weight and bias (GPT-NeoX, GPT-2, Phi-2, StableLM), or weight only
    (open_lm's gain-only norms: bias None). Its own class so targets can tell it from the
    RMSNorm and swap either for their preferred form."""


def make_norm(spec: DecoderSpec, dim: int | None = None) -> nn.Module:
    dim = dim or spec.hidden_size
    if spec.norm == "layer":
        return LayerNorm(dim, eps=spec.norm_eps, bias=spec.norm_bias)
    return RMSNorm(dim, spec.norm_eps)


_GELU_TANH_C = math.sqrt(2.0 / math.pi)


def gelu_tanh_elementwise(x):
    """gelu(approximate="tanh") from mul/add/tanh, for targets whose converters lose the
    `approximate` flag: XNNPACK runs it as the exact-erf GELU, coremltools 9 ignores it."""
    return 0.5 * x * (1.0 + torch.tanh(_GELU_TANH_C * (x + 0.044715 * (x * x * x))))


def gelu_tanh(x):
    return F.gelu(x, approximate="tanh")


_ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "gelu_tanh": gelu_tanh}


class Attention(nn.Module):
    """Self-attention. A layer that shares keys and values (spec.kv_source, Gemma 3n) has no
    k/v projections: it attends over the k/v its source layer computed in the same call,
    which `kv_shared` carries from layer to layer. It still hands them to `attend`, so its
    target keeps a copy in the layer's own cache (the same rows as the source's)."""

    def __init__(self, spec: DecoderSpec, layer: int = 0):
        super().__init__()
        d, hd = spec.hidden_size, spec.head_dim
        heads, kv = spec.layer_heads(layer), spec.layer_kv_heads(layer)
        self.num_heads, self.num_kv_heads, self.head_dim = heads, kv, hd
        self.kv_source = spec.kv_source(layer)
        self.shares_kv = layer in spec.kv_sources
        self.q_proj = nn.Linear(d, heads * hd, bias=spec.qkv_bias)
        if self.kv_source is None:
            self.k_proj = nn.Linear(d, kv * hd, bias=spec.qkv_bias)
            self.v_proj = nn.Linear(d, kv * hd, bias=spec.qkv_bias)
        self.o_proj = nn.Linear(heads * hd, d, bias=spec.output_bias)
        if spec.attention_output_gate:  # Qwen3.5: the family splits these rows off q_proj
            self.gate_proj = nn.Linear(d, heads * hd, bias=spec.qkv_bias)
        self.qk_norm_width = spec.qk_norm_width if spec.qk_norm else None
        if self.qk_norm_width == "head":
            # Gemma 3's (1 + w) norms, stored by the family as the effective scale; OpenELM's.
            self.q_norm = make_norm(spec, hd)
            if self.kv_source is None:
                self.k_norm = make_norm(spec, hd)
        elif self.qk_norm_width == "full":
            # open_lm: one norm over all heads' lanes of q (and of k) at once
            self.q_norm = make_norm(spec, heads * hd)
            self.k_norm = make_norm(spec, kv * hd)
        self.v_norm = UnscaledRMSNorm(spec.norm_eps) if spec.value_norm else None
        self.rotary = Rotary() if spec.layer_rope(layer) else None

    def forward(self, layer_index, x, rope, attend: Attend, kv_shared: dict | None = None):
        # -1 rather than the symbolic length: backends (XNNPACK) reject symbolic reshapes
        b = x.shape[0]
        q = self.q_proj(x)
        if self.qk_norm_width == "full":
            q = self.q_norm(q)
        q = q.view(b, -1, self.num_heads, self.head_dim)
        if self.qk_norm_width == "head":
            q = self.q_norm(q)
        if self.rotary is not None:
            cos, sin = rope
            q = self.rotary(q, cos, sin)
        if self.kv_source is not None:
            k, v = kv_shared[self.kv_source]
        else:
            k, v = self.k_proj(x), self.v_proj(x)
            if self.qk_norm_width == "full":
                k = self.k_norm(k)
            k = k.view(b, -1, self.num_kv_heads, self.head_dim)
            v = v.view(b, -1, self.num_kv_heads, self.head_dim)
            if self.qk_norm_width == "head":
                k = self.k_norm(k)
            if self.v_norm is not None:
                v = self.v_norm(v)
            if self.rotary is not None:
                k = self.rotary(k, cos, sin)
            if self.shares_kv:
                kv_shared[layer_index] = (k, v)
        out = attend(layer_index, q, k, v)
        if hasattr(self, "gate_proj"):
            out = out * torch.sigmoid(self.gate_proj(x))
        return self.o_proj(out)


class CausalConv(nn.Module):
    """Depthwise causal convolution over time with its state passed in and out: the one
    definition of the conv state's math, which every target runs (only where the state is
    kept differs). State layout [B, C, kernel-1], channels first, the last kernel-1 inputs
    (as ONNX Runtime GenAI's conv_state and transformers' conv cache hold them).

    Written as the kernel's shifted windows of [past, x] stacked, times the taps, summed;
    not F.conv1d: the same few elementwise ops convert on every target (XNNPACK, ONNX, Core
    ML) at any length. The taps are used whole, never sliced: a converter folds a slice of
    a weight into a nameless constant (coremltools does), and the weight's name is lost."""

    def __init__(self, channels: int, kernel: int, bias: bool):
        super().__init__()
        self.kernel = kernel
        self.weight = nn.Parameter(torch.zeros(channels, kernel))  # HF Conv1d weight [C,1,k] squeezed
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B,T,C], past [B,C,kernel-1] (zeros before the first token) -> (out [B,T,C],
        present [B,C,kernel-1]): out[t] = sum_j weight[:, j] * window[t + j] (+ bias)."""
        window = torch.cat([past.to(x.dtype), x.transpose(1, 2)], dim=-1)  # [B, C, k-1+T]
        t = x.shape[1]
        shifted = torch.stack([window[..., j:j + t] for j in range(self.kernel)], dim=-1)  # [B, C, T, k]
        out = (shifted.transpose(1, 2) * self.weight).sum(-1)  # [B, T, C]
        if self.bias is not None:
            out = out + self.bias
        return out, window[..., -(self.kernel - 1):]


class ShortConv(nn.Module):
    """LFM2's gated short convolution (transformers Lfm2ShortConv): B, C, x = in_proj(h);
    out_proj(C * conv(B * x)). Its state is the conv's (CausalConv)."""

    def __init__(self, spec: DecoderSpec):
        super().__init__()
        d = spec.hidden_size
        self.in_proj = nn.Linear(d, 3 * d, bias=spec.conv_bias)
        self.conv = CausalConv(d, spec.conv_kernel, spec.conv_bias)
        self.out_proj = nn.Linear(d, d, bias=spec.conv_bias)

    def forward(self, layer_index, x, convolve: Convolve):
        b, c, h = self.in_proj(x).chunk(3, dim=-1)
        return self.out_proj(c * convolve(layer_index, b * h, self.conv))


def zero_conv_state(spec: DecoderSpec, batch: int = 1, dtype=torch.float32) -> torch.Tensor:
    """The conv state before the first token: [batch, spec.conv_channels, kernel-1] zeros."""
    return torch.zeros(batch, spec.conv_channels, spec.conv_kernel - 1, dtype=dtype)


def zero_recurrent_state(spec: DecoderSpec, dtype=torch.float32) -> torch.Tensor:
    """A delta layer's matrix state before the first token: zeros of spec.recurrent_state_shape."""
    return torch.zeros(spec.recurrent_state_shape, dtype=dtype)


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(sum(x^2) + eps) over the last axis (transformers' and FLA's l2norm)."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


# Most tokens one call may feed a model with delta layers. gated_delta_rule holds T x T
# matrices per value head, and targets that plan memory for the largest call (ExecuTorch)
# would reserve them at the whole context: 16 heads x 4096^2 floats is 1 GiB a matrix. At 256
# they are 4 MiB; runtimes feed longer prompts in calls of this size.
DELTA_CALL_TOKENS = 256


def max_call_tokens(spec: DecoderSpec, max_seq_len: int) -> int:
    """The most tokens one call may feed: DELTA_CALL_TOKENS with delta layers, else the
    context (less the one position the next token needs)."""
    return min(max_seq_len - 1, DELTA_CALL_TOKENS) if spec.delta_layers else max_seq_len - 1


def gated_delta_rule(q, k, v, g, beta, state, max_len: int):
    """The gated delta rule over T tokens at once, from `state`: the one definition of a delta
    layer's recurrence, which every target runs (only where the state is kept differs).

    q, k [B,T,H,dk] (l2-normalized, q also scaled by dk^-1/2), v [B,T,H,dv], g (log decay,
    <= 0) and beta [B,T,H], state [B,H,dk,dv] -> (out [B,T,H,dv], state after the last token).
    Token by token (transformers' torch_recurrent_gated_delta_rule) it is
        S = exp(g_t) S;  S += k_t (beta_t (v_t - S^T k_t))^T;  o_t = S^T q_t.
    Here it is transformers' chunked form with the whole call as one chunk, so that prefill
    is a few matmuls at any T instead of a loop a graph cannot hold. The chunked form needs
    (I - L)^-1 for the strictly lower-triangular T x T matrix L (transformers inverts it a
    row at a time); since L is nilpotent, (I - L)^-1 = (I + L)(I + L^2)(I + L^4)..., and
    ceil(log2(max_len)) factors cover any T <= max_len: a fixed graph of plain matmuls that
    every converter takes. For T = 1 every L is 0 and this is exactly the step above."""
    t = q.shape[1]
    q, k, v, beta, g = (x.transpose(1, 2).float() for x in (q, k, v, beta, g))  # heads first
    positions = torch.arange(t, device=q.device)
    lower = positions[:, None] > positions[None, :]  # strictly below the diagonal
    causal = positions[:, None] >= positions[None, :]
    decay = g.cumsum(-1)  # [B,H,T]: log of the decay from the call's start through token t
    gap = decay[..., :, None] - decay[..., None, :]  # [B,H,T,T]; exp only where causal (<= 0)
    decay_mask = torch.exp(torch.where(causal, gap, torch.full_like(gap, -torch.inf)))
    k_beta, v_beta = k * beta[..., None], v * beta[..., None]
    strict = torch.where(lower, -(k_beta @ k.transpose(-1, -2)) * decay_mask, torch.zeros_like(gap))
    inverse, power = torch.eye(t, dtype=q.dtype, device=q.device) + strict, strict
    for _ in range(max(1, math.ceil(math.log2(max(max_len, 2)))) - 1):
        power = power @ power
        inverse = inverse + inverse @ power
    values = inverse @ v_beta  # [B,H,T,dv]
    k_cumdecay = inverse @ (k_beta * decay.exp()[..., None])
    values = values - k_cumdecay @ state
    scores = torch.where(causal, (q @ k.transpose(-1, -2)) * decay_mask, torch.zeros_like(gap))
    out = (q * decay.exp()[..., None]) @ state + scores @ values
    last = decay[..., -1:]  # [B,H,1]
    state = state * last.exp()[..., None] + (k * (last - decay).exp()[..., None]).transpose(-1, -2) @ values
    return out.transpose(1, 2), state


class GatedDeltaNet(nn.Module):
    """Qwen3.5's Gated DeltaNet (transformers Qwen3_5GatedDeltaNet): q, k, v through a short
    causal conv and silu; per value head a decay g = -exp(A_log) * softplus(a + dt_bias) and
    a write strength beta = sigmoid(b); the gated delta rule; an RMSNorm per head gated by
    silu(z); out_proj. Its state is the conv's (CausalConv) and the rule's matrix (Recur)."""

    def __init__(self, spec: DecoderSpec):
        super().__init__()
        d = spec.hidden_size
        self.key_heads, self.key_dim = spec.delta_key_heads, spec.delta_key_dim
        self.value_heads, self.value_dim = spec.delta_value_heads, spec.delta_value_dim
        values = self.value_heads * self.value_dim
        self.in_proj_qkv = nn.Linear(d, spec.conv_channels, bias=False)
        self.in_proj_z = nn.Linear(d, values, bias=False)
        self.in_proj_b = nn.Linear(d, self.value_heads, bias=False)
        self.in_proj_a = nn.Linear(d, self.value_heads, bias=False)
        self.conv = CausalConv(spec.conv_channels, spec.conv_kernel, bias=False)
        self.dt_bias = nn.Parameter(torch.zeros(self.value_heads))
        self.A_log = nn.Parameter(torch.zeros(self.value_heads))
        self.norm = RMSNorm(self.value_dim, spec.norm_eps)
        self.out_proj = nn.Linear(values, d, bias=False)

    def forward(self, layer_index, x, convolve: Convolve, recur: Recur):
        b = x.shape[0]
        qkv = F.silu(convolve(layer_index, self.in_proj_qkv(x), self.conv))
        keys = self.key_heads * self.key_dim
        q, k, v = qkv.split([keys, keys, self.value_heads * self.value_dim], dim=-1)
        q = q.reshape(b, -1, self.key_heads, self.key_dim)
        k = k.reshape(b, -1, self.key_heads, self.key_dim)
        v = v.reshape(b, -1, self.value_heads, self.value_dim)
        if self.value_heads != self.key_heads:  # value head h reads key head h // groups
            groups = self.value_heads // self.key_heads
            q, k = q.repeat_interleave(groups, dim=2), k.repeat_interleave(groups, dim=2)
        q = l2_normalize(q.float()) * self.key_dim ** -0.5
        k = l2_normalize(k.float())
        beta = torch.sigmoid(self.in_proj_b(x)).float()
        g = -self.A_log.float().exp() * F.softplus(self.in_proj_a(x).float() + self.dt_bias.float())
        out = recur(layer_index, q, k, v.float(), g, beta).to(x.dtype)
        z = self.in_proj_z(x).reshape(b, -1, self.value_heads, self.value_dim)
        out = self.norm(out) * F.silu(z)
        return self.out_proj(out.reshape(b, -1, self.value_heads * self.value_dim))


class GatedMLP(nn.Module):
    def __init__(self, spec: DecoderSpec, layer: int = 0):
        super().__init__()
        d, inter = spec.hidden_size, spec.layer_intermediate(layer)
        self.gate_proj = nn.Linear(d, inter, bias=spec.mlp_bias)
        self.up_proj = nn.Linear(d, inter, bias=spec.mlp_bias)
        self.down_proj = nn.Linear(inter, d, bias=spec.mlp_bias)
        self.act = _ACTIVATIONS[spec.activation]
        sparsity = spec.layer_sparsity(layer)
        # Gemma 3n's Gaussian top-k: the gate's lanes below mean + z * std (z the standard
        # normal's quantile at the sparsity, a constant) are zeroed, the rest shifted down by
        # that cutoff (ref: transformers Gemma3nTextMLP._gaussian_topk)
        self.sparsity_quantile = NormalDist().inv_cdf(sparsity) if sparsity > 0 else None

    def forward(self, x):
        gate = self.gate_proj(x)
        if self.sparsity_quantile is not None:
            mean = gate.mean(-1, keepdim=True)
            std = (gate - mean).pow(2).mean(-1, keepdim=True).sqrt()  # population std, as plain ops
            gate = F.relu(gate - (mean + std * self.sparsity_quantile))
        return self.down_proj(self.act(gate) * self.up_proj(x))


class PlainMLP(nn.Module):
    def __init__(self, spec: DecoderSpec, layer: int = 0):
        super().__init__()
        d, inter = spec.hidden_size, spec.layer_intermediate(layer)
        self.fc_in = nn.Linear(d, inter, bias=spec.mlp_bias)
        self.fc_out = nn.Linear(inter, d, bias=spec.mlp_bias)
        self.act = _ACTIVATIONS[spec.activation]

    def forward(self, x):
        return self.fc_out(self.act(self.fc_in(x)))


class DecoderLayer(nn.Module):
    """Norm names by role: input_norm feeds attention, post_attention_norm feeds the MLP
    (absent when both share input_norm; identities without pre_norms); the sandwich norms
    (Gemma, OLMo 2) normalize each sub-layer's output before its residual add; residual_scale
    (MiniCPM) scales each sub-layer's output before its add."""

    def __init__(self, spec: DecoderSpec, layer: int = 0):
        super().__init__()
        self.residual = spec.residual
        self.residual_scale = spec.residual_scale
        # without pre-norms (OLMo 2) the sub-layers read the residual stream as it is
        self.input_norm = make_norm(spec) if spec.pre_norms else nn.Identity()
        # the token mixer, by the state the layer carries (spec.layer_state)
        if spec.layer_state(layer) == "conv":
            self.conv = ShortConv(spec)
        elif spec.layer_state(layer) == "delta":
            self.delta = GatedDeltaNet(spec)
        else:
            self.attention = Attention(spec, layer)
        if spec.residual != "parallel_shared_norm":
            self.post_attention_norm = make_norm(spec) if spec.pre_norms else nn.Identity()
        self.mlp = GatedMLP(spec, layer) if spec.mlp == "gated" else PlainMLP(spec, layer)
        if spec.sandwich_norms:
            self.attention_output_norm = make_norm(spec)
            self.mlp_output_norm = make_norm(spec)

    def forward(self, layer_index, h, rope, attend: Attend, convolve: Convolve | None = None,
                recur: Recur | None = None, kv_shared: dict | None = None, per_layer_input=None):
        x = self.input_norm(h)
        if hasattr(self, "conv"):
            a = self.conv(layer_index, x, convolve)
        elif hasattr(self, "delta"):
            a = self.delta(layer_index, x, convolve, recur)
        else:
            a = self.attention(layer_index, x, rope, attend, kv_shared)
        if hasattr(self, "attention_output_norm"):
            a = self.attention_output_norm(a)
        if self.residual_scale != 1.0:  # skipped at 1.0: other families' graphs stay as they were
            a = a * self.residual_scale
        if self.residual == "sequential":
            h = h + a
            x = self.post_attention_norm(h)
        elif self.residual == "parallel":
            x = self.post_attention_norm(h)
        m = self.mlp(x)
        if hasattr(self, "mlp_output_norm"):
            m = self.mlp_output_norm(m)
        if self.residual_scale != 1.0:
            m = m * self.residual_scale
        return h + m if self.residual == "sequential" else h + a + m


class Laurel(nn.Module):
    """Gemma 3n's LAuReL (transformers Gemma3nTextLaurelBlock): x + norm(right(left(x))), a
    low-rank residual branch."""

    def __init__(self, spec: DecoderSpec):
        super().__init__()
        self.linear_left = nn.Linear(spec.hidden_size, spec.laurel_rank, bias=False)
        self.linear_right = nn.Linear(spec.laurel_rank, spec.hidden_size, bias=False)
        self.post_laurel_norm = make_norm(spec)

    def forward(self, x):
        return x + self.post_laurel_norm(self.linear_right(self.linear_left(x)))


class AltUp(nn.Module):
    """Gemma 3n's AltUp (transformers Gemma3nTextAltUp). The residual stream is n streams,
    stacked [n,B,T,d]; a layer runs on one (the active one) predicted from all of them, and
    its output corrects each. The coefficients of both steps come from a router over the
    active stream: tanh(router(norm(x) / d)) [B,T,n]."""

    def __init__(self, spec: DecoderSpec):
        super().__init__()
        n, d = spec.altup_inputs, spec.hidden_size
        self.n, self.active, self.router_scale = n, spec.altup_active, 1.0 / d
        self.correct_output_scale = nn.Parameter(torch.zeros(d))
        self.correction_coefs = nn.Linear(n, n, bias=False)
        self.prediction_coefs = nn.Linear(n, n * n, bias=False)
        self.modality_router = nn.Linear(d, n, bias=False)
        self.router_norm = make_norm(spec)

    def modalities(self, x):
        return torch.tanh(self.modality_router(self.router_norm(x) * self.router_scale).float()).to(x.dtype)

    def predict(self, streams):
        """streams [n,B,T,d] -> predictions: stream i + sum_j coef[i, j] * stream j."""
        coefs = self.prediction_coefs(self.modalities(streams[self.active]))  # [B,T,n*n], row-major [i, j]
        coefs = coefs.reshape(coefs.shape[0], -1, self.n, self.n).transpose(-1, -2)  # [B,T,j,i]
        mixed = streams.permute(1, 2, 3, 0) @ coefs  # [B,T,d,n]
        return mixed.permute(3, 0, 1, 2) + streams

    def correct(self, predictions, activated):
        """Each prediction plus the layer's innovation on the active stream, scaled per stream
        by 1 + coef."""
        coefs = self.correction_coefs(self.modalities(activated)) + 1.0  # [B,T,n]
        innovation = activated - predictions[self.active]
        return predictions + innovation.unsqueeze(0) * coefs.permute(2, 0, 1).unsqueeze(-1)


def rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean(-1, keepdim=True).sqrt()


class AltUpLayer(nn.Module):
    """Gemma 3n's decoder layer (transformers Gemma3nTextDecoderLayer) on AltUp streams
    [n,B,T,d]: predict; attention and LAuReL on the active prediction, averaged; the MLP;
    correct every stream with the result; then the active stream, gated by this layer's
    per-layer embedding, is added to the other streams. Norm names as DecoderLayer's."""

    def __init__(self, spec: DecoderSpec, layer: int = 0):
        super().__init__()
        d, p = spec.hidden_size, spec.per_layer_input_size
        self.correct_scale = spec.altup_correct_scale
        self.altup = AltUp(spec)
        self.input_norm = make_norm(spec)
        self.laurel = Laurel(spec)
        self.attention = Attention(spec, layer)
        self.attention_output_norm = make_norm(spec)
        self.post_attention_norm = make_norm(spec)
        self.mlp = GatedMLP(spec, layer)
        self.mlp_output_norm = make_norm(spec)
        self.per_layer_input_gate = nn.Linear(d, p, bias=False)
        self.per_layer_projection = nn.Linear(p, d, bias=False)
        self.post_per_layer_input_norm = make_norm(spec)
        self.act = _ACTIVATIONS[spec.activation]

    def forward(self, layer_index, streams, rope, attend: Attend, convolve=None, recur=None,
                kv_shared: dict | None = None, per_layer_input=None):
        predictions = self.altup.predict(streams)
        active = predictions[self.altup.active]
        x = self.input_norm(active)
        a = self.attention_output_norm(self.attention(layer_index, x, rope, attend, kv_shared))
        h = (active + a + self.laurel(x)) / math.sqrt(2.0)
        h = h + self.mlp_output_norm(self.mlp(self.post_attention_norm(h)))
        corrected = self.altup.correct(predictions, h)
        first = corrected[self.altup.active]
        if self.correct_scale:
            first = first * self.altup.correct_output_scale
        gated = self.act(self.per_layer_input_gate(first)) * per_layer_input
        update = self.post_per_layer_input_norm(self.per_layer_projection(gated))
        # every stream but the first takes the update (ref: corrected_predictions[1:] += ...)
        return torch.cat([corrected[:1], corrected[1:] + update], dim=0)


class Decoder(nn.Module):
    """Embedding (+ learned positions, x scale) -> N layers -> final norm (/ logit divisor)
    -> lm head (-> softcap)."""

    def __init__(self, spec: DecoderSpec):
        super().__init__()
        self.spec = spec
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        if spec.learned_positions:
            self.embed_positions = nn.Embedding(spec.max_position_embeddings, spec.hidden_size)
        layer_kind = AltUpLayer if spec.altup_inputs else DecoderLayer
        self.layers = nn.ModuleList(layer_kind(spec, i) for i in range(spec.num_layers))
        if spec.altup_inputs:  # the streams beside the token embedding, in and out
            self.altup_projections = nn.ModuleList(
                nn.Linear(spec.hidden_size, spec.hidden_size, bias=False) for _ in range(spec.altup_inputs - 1))
            self.altup_unembed_projections = nn.ModuleList(
                nn.Linear(spec.hidden_size, spec.hidden_size, bias=False) for _ in range(spec.altup_inputs - 1))
        if spec.per_layer_input_size:
            lanes = spec.num_layers * spec.per_layer_input_size
            self.embed_tokens_per_layer = nn.Embedding(spec.per_layer_vocab_size, lanes)
            self.per_layer_model_projection = nn.Linear(spec.hidden_size, lanes, bias=False)
            self.per_layer_projection_norm = make_norm(spec, spec.per_layer_input_size)
        self.norm = make_norm(spec)
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=spec.lm_head_bias)
        if spec.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(self, input_ids, rope: dict, attend: Attend, last_only: bool = False, positions=None,
                convolve: Convolve | None = None, recur: Recur | None = None):
        """input_ids [B,T]; rope {kind: (cos, sin)} [T, rotary_width] for the positions of
        those tokens; positions [T] int64 (read only with learned position embeddings);
        attend / convolve / recur keep the state of attention / conv / delta layers
        (spec.layer_state)."""
        spec = self.spec
        h, per_layer = self.embed(input_ids, positions)
        # once, broadcast over heads in every layer; in the activation dtype, as HF casts them
        rope = {kind: (cos.to(h.dtype).unsqueeze(1), sin.to(h.dtype).unsqueeze(1)) for kind, (cos, sin) in rope.items()}
        kv_shared = {}  # the keys and values of spec.kv_sources, for the layers that share them
        for i, layer in enumerate(self.layers):
            h = layer(i, h, rope.get(spec.layer_rope(i)), attend, convolve, recur, kv_shared,
                      None if per_layer is None else per_layer[:, :, i])
        return self.head(h, last_only)

    def embed(self, input_ids, positions=None):
        """(the residual stream entering layer 0, per-layer inputs or None). The stream is the
        token embedding, or with AltUp the streams [n,B,T,d], the others projected from it
        at its magnitude."""
        x = self.token_embedding(input_ids, positions)
        per_layer = self.per_layer_inputs(input_ids, x)
        if not self.spec.altup_inputs:
            return x, per_layer
        return torch.stack([x] + [_at_magnitude(p(x), rms(x)) for p in self.altup_projections]), per_layer

    def token_embedding(self, input_ids, positions=None):
        spec = self.spec
        h = self.embed_tokens(input_ids)
        if spec.learned_positions:
            h = h + self.embed_positions(positions)
        if spec.embedding_scale != 1.0:
            # HF Gemma casts the scale to the weight dtype first (bf16: sqrt(640) -> 25.25)
            h = h * torch.tensor(spec.embedding_scale, dtype=h.dtype)
        return h

    def per_layer_inputs(self, input_ids, token_embedding):
        """[B,T,layers,per_layer_input_size]: each layer's per-layer embedding mixed with a
        projection of the token embedding (ref: Gemma3nTextModel.get_per_layer_inputs and
        project_per_layer_inputs); None without per-layer embeddings."""
        spec = self.spec
        if not spec.per_layer_input_size:
            return None
        shape = (input_ids.shape[0], -1, spec.num_layers, spec.per_layer_input_size)
        ids = input_ids
        if spec.per_layer_vocab_size < spec.vocab_size:  # tokens past the table read row 0
            ids = torch.where(ids < spec.per_layer_vocab_size, ids, torch.zeros_like(ids))
        table = self.embed_tokens_per_layer(ids)
        table = table * torch.tensor(spec.per_layer_input_size ** 0.5, dtype=table.dtype)
        projected = self.per_layer_model_projection(token_embedding) * (spec.hidden_size ** -0.5)
        projected = self.per_layer_projection_norm(projected.reshape(shape))
        return (projected + table.reshape(shape)) * (2.0 ** -0.5)

    def head(self, h, last_only: bool = False):
        """Logits from the last layer's residual stream (with AltUp: the streams brought back
        to the first one's magnitude and averaged)."""
        spec = self.spec
        if spec.altup_inputs:
            target = rms(h[0])
            h = torch.stack([h[0]] + [_at_magnitude(p(s), target)
                                      for p, s in zip(self.altup_unembed_projections, h[1:])]).mean(0)
        h = self.norm(h)
        if last_only:
            h = h[:, -1, :]
        if spec.logit_divisor != 1.0:
            # MiniCPM divides (by hidden_size / dim_model_base, e.g. 9.0): not the reciprocal product
            h = h / spec.logit_divisor
        logits = self.lm_head(h)
        if spec.final_softcap is not None:
            logits = softcap(logits, spec.final_softcap)
        return logits


def _at_magnitude(x, magnitude):
    """x rescaled to the given root-mean-square (ref: Gemma3nTextModel.forward's AltUp
    projections; the mean square is clamped at 1e-5)."""
    return x * magnitude / x.pow(2).mean(-1, keepdim=True).clamp(min=1e-5).sqrt()


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B,KV,S,hd] -> [B,KV*groups,S,hd]; query head h reads kv head h // groups."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def attention_mask(query_positions: torch.Tensor, key_positions: torch.Tensor, window: int | None) -> torch.Tensor:
    """Boolean [T,S]: key visible to query iff key <= query and, in a sliding layer,
    key > query - window (HF semantics, ARCHITECTURES.md §0.3)."""
    q, k = query_positions[:, None], key_positions[None, :]
    allowed = k <= q
    if window is not None:
        allowed = allowed & (k > q - window)
    return allowed


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An attention_mask as the additive form kernels take: 0 where allowed, else the dtype's
    lowest finite value (as transformers uses; not -inf, so a row or key block with nothing
    visible needs no guard against exp(-inf - -inf) in a kernel)."""
    return torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)


def softcap(x: torch.Tensor, cap: float, scale: float = 1.0) -> torch.Tensor:
    """Gemma 2's soft cap, cap * tanh(scale * x / cap), with the scale folded into one multiply:
    attention scores (scale = the attention scale) and final logits."""
    return torch.tanh(x * (scale / cap)) * cap


def attention(q, k, v, mask, scale, softcap_value: float | None = None):
    """q [B,T,H,hd], k/v [B,S,KV,hd] (S >= T), boolean mask [T,S] -> [B,T,H*hd].
    With a softcap (Gemma 2) the scores are capped before the mask: SDPA cannot."""
    b, t, h, hd = q.shape
    groups = h // k.shape[2]
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    k, v = repeat_kv(k, groups), repeat_kv(v, groups)
    if softcap_value is None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    else:
        scores = softcap(q @ k.transpose(-1, -2), softcap_value, scale)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        out = torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v
    return out.transpose(1, 2).reshape(b, t, h * hd)


class OneSequence:
    """The eager forward of one sequence from position 0, a layer at a time: full causal
    attention (each layer's window applied), conv layers from a zero state. Calibration
    passes use it where they change or measure the decoder between layers."""

    def __init__(self, spec: DecoderSpec, ids: list[int]):
        self.spec = spec
        self.ids = torch.tensor([ids])
        self.positions = torch.arange(len(ids))
        masks = {w: attention_mask(self.positions, self.positions, w)
                 for w in {spec.layer_window(i) for i in range(spec.num_layers)}}
        self.attend = lambda i, q, k, v: attention(q, k, v, masks[spec.layer_window(i)], spec.attention_scale,
                                                   spec.attention_softcap)
        self.convolve = lambda i, x, conv: conv(x, zero_conv_state(spec, x.shape[0], x.dtype))[0]
        self.recur = lambda i, q, k, v, g, beta: gated_delta_rule(
            q, k, v, g, beta, zero_recurrent_state(spec).expand(q.shape[0], -1, -1, -1), q.shape[1])[0]
        tables = select_rows(rotary_tables(spec, len(ids)), slice(None))
        self.rope = {kind: (c.unsqueeze(1), s.unsqueeze(1)) for kind, (c, s) in tables.items()}

    def embed(self, decoder: Decoder) -> torch.Tensor:
        h, self.per_layer = decoder.embed(self.ids, self.positions)
        self.kv_shared = {}
        return h

    def layer(self, layer: DecoderLayer, i: int, h: torch.Tensor) -> torch.Tensor:
        """Layer i's output. Layers that share keys and values read those their source layer
        computed in the last embed()-started pass that ran it."""
        per_layer = None if self.per_layer is None else self.per_layer[:, :, i]
        return layer(i, h, self.rope.get(self.spec.layer_rope(i)), self.attend, self.convolve, self.recur,
                     self.kv_shared, per_layer)


class EagerDecoder(nn.Module):
    """The decoder with full causal attention and no cache: stage-1 parity and references."""

    def __init__(self, decoder: Decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        spec = self.decoder.spec
        positions = torch.arange(input_ids.shape[1])
        masks = {w: attention_mask(positions, positions, w) for w in {spec.layer_window(i) for i in range(spec.num_layers)}}

        def attend(i, q, k, v):
            return attention(q, k, v, masks[spec.layer_window(i)], spec.attention_scale, spec.attention_softcap)

        def convolve(i, x, conv):
            return conv(x, zero_conv_state(spec, x.shape[0], x.dtype))[0]

        def recur(i, q, k, v, g, beta):
            state = zero_recurrent_state(spec).expand(q.shape[0], -1, -1, -1)
            return gated_delta_rule(q, k, v, g, beta, state, q.shape[1])[0]

        rope = select_rows(rotary_tables(spec, len(positions)), slice(None))
        return self.decoder(input_ids, rope, attend, positions=positions, convolve=convolve, recur=recur)
