"""ExecuTorch's export-time forms of the decoder, converted by mobilekit.targets.executorch:
the wrapper `ExecuTorchDecoder` with its KV cache in mutable buffers (llama::update_cache,
llama::custom_sdpa), the norms, rotaries and tanh-GELUs swapped for forms XNNPACK delegates
whole (`xnnpack_friendly`), and the patches that keep XNNPACK's lowering lean.

Kept apart from the target so that the target module (its schemes, quantizers and I/O
contract) imports without torch: `mobilekit list` and `info` read schemes, not graphs.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from mobilekit.formats.executorch import conv_state_buffer, kv_cache_buffers, recurrent_state_buffer
from mobilekit.lowering import replace_modules, spell_out_tanh_gelu
from mobilekit.modeling import Decoder, DecoderSpec
from mobilekit.modeling.decoder import (LayerNorm, RMSNorm, Rotary, additive_mask, attention_mask,
                                       gated_delta_rule, max_call_tokens, rotary_attention_factor, rotary_inv_freq, softcap,
                                       zero_conv_state, zero_recurrent_state)


class LinearMeanRMSNorm(nn.Module):
    """RMSNorm whose mean of squares is a linear layer (x² · 1/d): XNNPACK has no
    last-dim mean for these ranks, and each op it rejects splits the graph into another
    delegate call. Same math as RMSNorm (fp32 models); also used for Gemma 3's q/k norms
    over head_dim."""

    def __init__(self, norm: RMSNorm):
        super().__init__()
        self.eps, self.weight = norm.eps, norm.weight
        dim = norm.weight.shape[0]
        self.register_buffer("mean_weight", torch.full((1, dim), 1.0 / dim), persistent=False)

    def forward(self, x):
        mean_sq = torch.nn.functional.linear(x * x, self.mean_weight)
        return self.weight * (x * torch.rsqrt(mean_sq + self.eps))


class LinearMeanLayerNorm(nn.Module):
    """LayerNorm with its mean and (biased) variance as linear layers with 1/d weights:
    XNNPACK in executorch 1.5.1 has no layer-norm op, so native_layer_norm would run in the
    portable kernels, outside the delegate, between partitions (tiny GPT-NeoX: 7 portable
    layer norms and 9 delegate calls, against 0 and 7)."""

    def __init__(self, norm: LayerNorm):
        super().__init__()
        self.eps, self.weight, self.bias = norm.eps, norm.weight, norm.bias
        dim = norm.normalized_shape[0]
        self.register_buffer("mean_weight", torch.full((1, dim), 1.0 / dim), persistent=False)

    def forward(self, x):
        centered = x - torch.nn.functional.linear(x, self.mean_weight)
        var = torch.nn.functional.linear(centered * centered, self.mean_weight)
        y = centered * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight
        return y + self.bias if self.bias is not None else y


class MatmulRotary(nn.Module):
    """rotate_half as a signed permutation matrix: XNNPACK rejects the dynamic-length
    slices of the usual form, which would split every layer into extra partitions.

    Partial rotary (rotary_width < head_dim) uses the same head_dim x head_dim matrix, zero
    on the pass-through lanes; the wrapper gives those lanes cos 1 and sin 0, so
    x*cos + (x R^T)*sin leaves them unchanged without slicing the head."""

    def __init__(self, head_dim: int, rotary_width: int | None = None):
        super().__init__()
        half = (rotary_width or head_dim) // 2
        rotate = torch.zeros(head_dim, head_dim)
        rotate[torch.arange(half), torch.arange(half) + half] = -1.0  # out[:half] = -x[half:r]
        rotate[torch.arange(half) + half, torch.arange(half)] = 1.0  # out[half:r] = x[:half]
        self.register_buffer("rotate", rotate, persistent=False)

    def forward(self, x, cos, sin):
        return x * cos + torch.nn.functional.linear(x, self.rotate) * sin


def xnnpack_friendly(module: nn.Module, spec: DecoderSpec) -> None:
    """In place: swap the decoder's norms, rotaries and tanh-GELUs for forms XNNPACK
    delegates whole (and computes exactly)."""
    def xnnpack_form(child: nn.Module) -> nn.Module | None:
        if isinstance(child, RMSNorm):
            return LinearMeanRMSNorm(child)
        if isinstance(child, LayerNorm):
            return LinearMeanLayerNorm(child)
        if isinstance(child, Rotary):
            return MatmulRotary(spec.head_dim, spec.rotary_width)
        return None

    replace_modules(module, xnnpack_form)
    spell_out_tanh_gelu(module)


def attention_plan(spec: DecoderSpec) -> list[str]:
    """How each layer attends over the cache:
    "custom_sdpa": llama::custom_sdpa, causal from start_pos (the fast path);
    "custom_sdpa_masked": llama::custom_sdpa with the layer's sliding-window mask;
    "explicit": matmul, softcap, mask, softmax, matmul (custom_sdpa has no softcap);
    "conv" / "delta": not attention: a conv or delta layer (its states are buffers of its own)."""
    plan = []
    for i in range(spec.num_layers):
        if spec.layer_state(i) in ("conv", "delta"):
            plan.append(spec.layer_state(i))
        elif spec.attention_softcap is not None:
            plan.append("explicit")
        elif spec.layer_window(i) is not None:
            plan.append("custom_sdpa_masked")
        else:
            plan.append("custom_sdpa")
    return plan


def explicit_attention(q, k_cache, v_cache, mask, scale: float, cap: float | None):
    """decoder.attention's math over the whole cache, without repeating kv heads (batch 1):
    q [1,T,H,hd], caches [1,S,KV,hd], `mask` [groups*T, S] additive (0 or a large negative;
    the [T,S] mask repeated once per query head of a kv head) -> [1,T,H*hd]. Query head h
    reads kv head h // groups, as repeat_kv does."""
    _, _, h, hd = q.shape
    kv = k_cache.shape[2]
    groups = h // kv
    # [KV, groups*T, hd]: the queries of one kv head's group stacked on the row axis
    qg = q.reshape(-1, kv, groups, hd).permute(1, 2, 0, 3).reshape(kv, -1, hd)
    k, v = k_cache.reshape(-1, kv, hd).transpose(0, 1), v_cache.reshape(-1, kv, hd).transpose(0, 1)
    scores = torch.bmm(qg, k.transpose(1, 2))
    scores = scores * scale if cap is None else softcap(scores, cap, scale)
    probs = torch.softmax(scores + mask, dim=-1)
    out = torch.bmm(probs, v).reshape(kv, groups, -1, hd)
    return out.permute(2, 0, 1, 3).reshape(1, -1, h * hd)


class ExecuTorchDecoder(nn.Module):
    """The decoder with its state in mutable buffers: each attention layer's KV cache in
    ExecuTorch's custom-op layout [1, max_seq_len, kv_heads, head_dim], each conv layer's
    state [1, channels, kernel-1] (modeling.decoder.CausalConv), each delta layer's conv
    state and recurrent matrix [1, value heads, key dim, value dim] (gated_delta_rule). The cache is full-length in
    every attention layer: sliding windows are applied as masks, exact at any context but no
    smaller in memory."""

    def __init__(self, decoder: Decoder, max_seq_len: int):
        super().__init__()
        spec = decoder.spec
        self.decoder = decoder
        self.max_seq_len = max_seq_len
        self.plan = attention_plan(spec)
        # Rotary angles are computed in the graph from the positions rather than stored as
        # [max_seq_len, head_dim] tables: that is 1 MB of .pte at 2048 tokens, for a few
        # hundred cos/sin per token at run time. One frequency per head lane, in the
        # half-split layout [f, f, 0...]: the zero lanes (partial rotary) get cos 1, sin 0.
        self.rope_kinds = spec.rope_kinds
        self.rope_scales = {}
        pad = spec.head_dim - spec.rotary_width
        for kind in self.rope_kinds:
            inv_freq = rotary_inv_freq(spec, kind)
            self.register_buffer(f"lane_freq_{kind}", torch.cat([inv_freq, inv_freq, torch.zeros(pad)]),
                                 persistent=False)
            scale = rotary_attention_factor(spec, kind)
            if scale != 1.0:
                # LongRoPE scales cos and sin of the rotating lanes only
                self.rope_scales[kind] = scale
                self.register_buffer(f"cos_scale_{kind}", torch.cat([torch.full((spec.rotary_width,), scale),
                                                                     torch.ones(pad)]), persistent=False)
        for i in spec.attention_layers:  # per-layer kv heads (OpenELM): each buffer its own size
            shape = (1, max_seq_len, spec.layer_kv_heads(i), spec.head_dim)
            for name in kv_cache_buffers(i):
                self.register_buffer(name, torch.zeros(shape), persistent=False)
        for i in spec.conv_layers:
            self.register_buffer(conv_state_buffer(i), zero_conv_state(spec), persistent=False)
        for i in spec.delta_layers:
            self.register_buffer(recurrent_state_buffer(i), zero_recurrent_state(spec), persistent=False)

    def _rope(self, positions: torch.Tensor) -> dict:
        rope = {}
        for kind in self.rope_kinds:
            angles = torch.outer(positions, getattr(self, f"lane_freq_{kind}"))
            cos, sin = angles.cos(), angles.sin()
            if kind in self.rope_scales:
                cos, sin = cos * getattr(self, f"cos_scale_{kind}"), sin * self.rope_scales[kind]
            rope[kind] = (cos, sin)
        return rope

    def _masks(self, start, seq_len: int) -> dict:
        """Boolean [T, max_seq_len] per window the plan needs (None = causal), over the whole
        cache: custom_sdpa with a mask reads all max_seq_len keys (executorch 1.5.1), and
        unwritten or stale cache rows lie after the query, so the mask hides them."""
        spec = self.decoder.spec
        windows = {spec.layer_window(i) for i, how in enumerate(self.plan) if how in ("custom_sdpa_masked", "explicit")}
        if not windows:
            return {}
        query, key = torch.arange(seq_len) + start, torch.arange(self.max_seq_len)
        return {w: attention_mask(query, key, w) for w in windows}

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        spec = self.decoder.spec
        seq_len = tokens.shape[1]
        start = input_pos[0].item()
        torch._check_is_size(start)
        torch._check(start + seq_len <= self.max_seq_len)
        rope = self._rope(torch.arange(seq_len, dtype=torch.float32) + start) if self.rope_kinds else {}
        positions = torch.arange(seq_len) + start if spec.learned_positions else None
        # custom_sdpa adds a float mask to the scores. A finite minimum (as transformers uses)
        # rather than -inf: its flash kernel works in key blocks of 512, and with a window
        # whole blocks are masked for a query, where -inf relies on the kernel guarding
        # exp(-inf - -inf) (1.5.1's does; a finite minimum needs no guard).
        masks = {w: additive_mask(allowed, torch.float32) for w, allowed in self._masks(start, seq_len).items()}
        # explicit attention takes the mask repeated once per query head of a kv head
        grouped = {}
        for i, how in enumerate(self.plan):
            key = (spec.layer_window(i), spec.layer_heads(i) // spec.layer_kv_heads(i))
            if how == "explicit" and key not in grouped:
                grouped[key] = masks[key[0]].repeat(key[1], 1) if key[1] > 1 else masks[key[0]]
        scale = spec.attention_scale

        # A sequence starts at position 0 with an empty state. The KV cache needs no reset
        # (rows past the query are masked), but a conv state is read whole: read it as zeros
        # there, in the graph, so the runner needs no reset call between prompts. A select,
        # not a multiply by 0: ExecuTorch gives a mutated buffer no initial values, and
        # whatever the memory holds (a NaN) times 0 is not 0.
        continuing = input_pos[:1] > 0 if spec.conv_layers else None  # no op in other graphs

        def convolve(i, x, conv):
            state = getattr(self, conv_state_buffer(i))
            out, present = conv(x, torch.where(continuing, state, torch.zeros_like(state)))
            state.copy_(present)
            return out

        def recur(i, q, k, v, g, beta):
            state = getattr(self, recurrent_state_buffer(i))
            past = torch.where(continuing, state, torch.zeros_like(state))
            out, present = gated_delta_rule(q, k, v, g, beta, past, max_call_tokens(spec, self.max_seq_len))
            state.copy_(present)
            return out

        def attend(i, q, k, v):
            k_cache, v_cache = (getattr(self, name) for name in kv_cache_buffers(i))
            torch.ops.llama.update_cache(k, k_cache, start)
            torch.ops.llama.update_cache(v, v_cache, start)
            how, window = self.plan[i], spec.layer_window(i)
            if how == "explicit":
                groups = spec.layer_heads(i) // spec.layer_kv_heads(i)
                return explicit_attention(q, k_cache, v_cache, grouped[window, groups], scale, spec.attention_softcap)
            if how == "custom_sdpa_masked":
                out = torch.ops.llama.custom_sdpa(q, k_cache, v_cache, start, masks[window], 0, False, scale)
            else:
                out = torch.ops.llama.custom_sdpa(q, k_cache, v_cache, start, None, 0, True, scale)
            return out.reshape(q.shape[0], -1, q.shape[2] * q.shape[3])

        return self.decoder(tokens, rope, attend, last_only=True, positions=positions, convolve=convolve,
                            recur=recur)


# XNNPACK preprocesses every partition with 17 graph passes, each re-tracing the whole
# partition; on a 30-layer int4 model that is most of the export time. These passes
# rewrite ops the decoder never emits inside a partition (convolutions, batch norm,
# upsampling, PReLU, aten SDPA: attention runs in llama::custom_sdpa outside XNNPACK),
# so skipping them changes nothing but the time. Checked against executorch 1.5.1.
_PASSES_FOR_OPS_WE_NEVER_EMIT = (
    "ConvertToUpsampleBilinear2d",
    "ConvertToSDPAPass",
    "FuseBatchNormPass",
    "DecomposeBatchNorm",
    "Conv1dUnsqueezePass",
    "PReLUReshapePass",
)


@contextlib.contextmanager
def lean_xnnpack_passes():
    from executorch.backends.xnnpack import _passes

    manager = _passes.XNNPACKPassManager
    original_init = manager.__init__

    def init(self, exported_program, passes=None):
        original_init(self, exported_program, passes)
        self.passes = [p for p in self.passes if p.__name__ not in _PASSES_FOR_OPS_WE_NEVER_EMIT]

    manager.__init__ = init
    try:
        yield
    finally:
        manager.__init__ = original_init


@contextlib.contextmanager
def partitions_share_weights():
    """ExecuTorch deep-copies each partition before the backend preprocesses it, weights
    included: a transient second copy of every delegated weight, which on a 12B int4 model
    is ~12 GB (measured). XNNPACK's preprocess reads weights and never writes them, so the
    copies share tensor storage, as ExecuTorch's own CUDA backend does in its low-memory
    mode; the graphs are still copied."""
    import copy

    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    def copy_sharing_weights(cls, edge_program, compile_specs):
        # Views into a larger storage (a fused qkv or gate_up split by the family: Phi-3,
        # OpenELM, open_lm) are still copied: shared, XNNPACK serialized their storage from its
        # start, i.e. the neighbouring weight (fp32 exports of those families were garbage).
        shared = {id(t): t for values in (edge_program.state_dict, edge_program.constants)
                  for t in values.values() if isinstance(t, torch.Tensor) and _owns_its_storage(t)}
        return copy.deepcopy(edge_program, shared)

    XnnpackBackend.copy_exported_program_for_preprocess = classmethod(copy_sharing_weights)
    try:
        yield
    finally:
        del XnnpackBackend.copy_exported_program_for_preprocess  # the inherited one again


def _owns_its_storage(t: torch.Tensor) -> bool:
    return t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size()
