"""ONNX's export-time forms of the decoder, exported by mobilekit.targets.onnx: the wrapper
`OnnxDecoder` with past/present KV tensors in GenAI's layout, the two custom torch ops that
translate to one ONNX node each (`onnx_ops`), and the one-node forms of the norms and
rotaries swapped in while exporting (`onnx_modules`).

Kept apart from the target so that the target module (its schemes, quantizers and I/O
contract) imports without torch: `mobilekit list` and `info` read schemes, not graphs.
"""

from __future__ import annotations

import torch
from torch import nn

from mobilekit.formats import layer_states
from mobilekit.formats.onnx import layer_state_names
from mobilekit.lowering import modules_replaced
from mobilekit.modeling import Decoder, rotary_tables
from mobilekit.modeling.decoder import RMSNorm, Rotary, additive_mask, gated_delta_rule
from mobilekit.modeling.decoder import attention_mask as visible_keys  # the graph input has its name
from mobilekit.modeling.decoder import softcap as capped  # the custom op's argument has its name


# --- ops that translate to one ONNX node each -----------------------------------------------
#
# Decomposed into primitive ops, a layer of the decoder costs ~70 small ONNX nodes; at decode
# (T=1) their per-node overhead, not the matmuls, dominated ONNX Runtime's time (SmolLM2 int4
# under GenAI: 35 tok/s vs 53 for GenAI's own builder, measured side by side). Two custom
# torch ops, translated to the standard opset-23 nodes below, plus F.rms_norm
# (-> RMSNormalization) leave ~16 nodes a layer and match the builder's decode speed. They
# also halve torch.export + translation time (fewer nodes to trace).

_OPS: dict = {}


def onnx_ops() -> dict:
    """Register (once) mobilekit_onnx::rotary and ::attention: eager math for torch.export's
    trace, fake kernels for its shapes, ONNX translations for torch.onnx."""
    if _OPS:
        return _OPS
    from torch.library import custom_op
    from onnxscript import ir
    from onnxscript import opset23 as op


    @custom_op("mobilekit_onnx::rotary", mutates_args=())
    def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x [B,T,heads,hd]; cos/sin [T,1,r], HF half-split layout within the first r lanes,
        # the rest pass through (decoder.Rotary; r < hd is partial rotary)
        return Rotary()(x, cos, sin)

    @rotary.register_fake
    def _(x, cos, sin):
        return torch.empty_like(x)

    @custom_op("mobilekit_onnx::attention", mutates_args=())
    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, past_k: torch.Tensor,
                  past_v: torch.Tensor, pads: torch.Tensor, scale: float,
                  softcap: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # q [B,T,H,hd], k/v [B,T,KV,hd], mask [T,total] additive, past [B,KV,P,hd]; softcap 0 =
        # none. pads (int64 [6], gap_pads): ONNX Pad's pads of k and v as [B,T,KV*hd], the gap
        # (GENAI_GAP) before the new keys and values, zero rows, so that presents are total long.
        # ONNX Attention (opset 23) caps the scaled scores before it adds the mask, as here.
        b, t, h, hd = q.shape
        k, v = (nn.functional.pad(x, (0, 0, 0, 0, int(pads[1]), 0)) for x in (k, v))
        k = torch.cat([past_k, k.transpose(1, 2)], dim=2)
        v = torch.cat([past_v, v.transpose(1, 2)], dim=2)
        groups = h // k.shape[1]
        if softcap:
            kk, vv = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
            scores = capped(q.transpose(1, 2) @ kk.transpose(-1, -2), softcap, scale)
            out = torch.softmax((scores + mask).float(), dim=-1).to(q.dtype) @ vv
        else:
            out = nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k, v, attn_mask=mask, scale=scale, enable_gqa=groups != 1
            )
        return out.transpose(1, 2).reshape(b, t, h * hd), k, v

    @attention.register_fake
    def _(q, k, v, mask, past_k, past_v, pads, scale, softcap):
        b, t, h, hd = q.shape
        present = (b, past_k.shape[1], mask.shape[-1], hd)
        return q.new_empty(b, t, h * hd), past_k.new_empty(present), past_v.new_empty(present)

    def flat(x):
        """x [B,T,n,hd] as [B,T,n*hd]. When x is itself a reshape of such a 3D tensor (the
        decoder's view of a projection, or our rotary's output), use that tensor: left in,
        the Reshape pairs were 10 nodes a layer and 15% of ONNX Runtime's decode time."""
        src = x.producer()
        if src is not None and src.op_type == "Reshape" and src.inputs[0] is not None:
            y = src.inputs[0]
            if (y.shape is not None and x.shape is not None and len(y.shape) == 3 and len(x.shape) == 4
                    and y.shape[:2] == x.shape[:2] and isinstance(x.shape[2], int) and isinstance(x.shape[3], int)
                    and y.shape[2] == x.shape[2] * x.shape[3]):
                return y
        return op.Reshape(x, op.Constant(value_ints=[0, 0, -1]))

    def rotary_onnx(x, cos, sin):
        heads, hd, r = x.shape[2], x.shape[3], cos.shape[-1]
        # RotaryEmbedding without position_ids takes cos/sin [B,T,r/2] (the table's first half).
        # Partial rotary: rotary_embedding_dim = r rotates the first r lanes (half-split within
        # them) and passes the rest through, which ONNX Runtime's CPU kernel does (tested).
        half = op.Constant(value_ints=[r // 2])
        zero, last = op.Constant(value_ints=[0]), op.Constant(value_ints=[2])
        shape = op.Constant(value_ints=[1, -1, r // 2])
        cos_half = op.Reshape(op.Slice(cos, zero, half, last), shape)
        sin_half = op.Reshape(op.Slice(sin, zero, half, last), shape)
        x3 = flat(x)
        partial = {"rotary_embedding_dim": r} if r != hd else {}
        out = op.RotaryEmbedding(x3, cos_half, sin_half, num_heads=heads, **partial)
        out.shape, out.type = x3.shape, x3.type  # same as its input: lets attention's flat() see through
        return op.Reshape(out, op.Constant(value_ints=[0, 0, heads, hd]))

    def attention_onnx(q, k, v, mask, past_k, past_v, pads, scale: float, softcap: float):
        # softcap (Gemma 2): ONNX Runtime's CPU Attention caps before the mask (tested).
        capped = {"softcap": softcap} if softcap else {}

        def padded(x):
            out = op.Pad(flat(x), pads)
            # the lanes stay as they were (ONNX Runtime infers Attention's output from them)
            out.shape, out.type = ir.Shape([x.shape[0], None, x.shape[2] * x.shape[3]]), x.type
            return out

        out, present_k, present_v, _ = op.Attention(
            flat(q), padded(k), padded(v), mask, past_k, past_v,
            q_num_heads=q.shape[2], kv_num_heads=k.shape[2], scale=scale, **capped,
        )
        return out, present_k, present_v

    _OPS.update(
        rotary=rotary,
        attention=attention,
        translations={
            torch.ops.mobilekit_onnx.rotary.default: rotary_onnx,
            torch.ops.mobilekit_onnx.attention.default: attention_onnx,
        },
    )
    return _OPS


class OnnxRMSNorm(nn.Module):
    """F.rms_norm, exported as one RMSNormalization node (computed in fp32, like RMSNorm)."""

    def __init__(self, norm):
        super().__init__()
        self.weight, self.eps = norm.weight, norm.eps

    def forward(self, x):
        return nn.functional.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class OnnxRotary(nn.Module):
    def forward(self, x, cos, sin):
        return torch.ops.mobilekit_onnx.rotary(x, cos, sin)


def onnx_modules(decoder: Decoder):
    """The decoder with its norms and rotaries swapped for the one-node forms while
    exporting; the caller's decoder is restored afterwards."""
    def onnx_form(child: nn.Module) -> nn.Module | None:
        if isinstance(child, RMSNorm):
            return OnnxRMSNorm(child)
        return OnnxRotary() if isinstance(child, Rotary) else None

    return modules_replaced(decoder, onnx_form)


# GENAI_GAP. ONNX Runtime GenAI (0.18) does not feed the last generated token when an app
# appends tokens after generating (a chat's next turn): the new tokens come one position late,
# with attention_mask, and the presents GenAI allocates, one wider than P+T. That token's slot
# in the cache is left zero, as GenAI's own builder models hold it (zeros in their shared
# buffer, attended like any key): the same tokens as theirs on the same weights
# (tests/targets/test_onnx.py). Every other call has no gap and computes as without.


def gap_pads(gap) -> torch.Tensor:
    """ONNX Pad's pads [6] that put `gap` zero rows before the new keys and values [B,T,KV*hd]
    (GENAI_GAP): built once per forward, read by every attention layer."""
    zero = torch.zeros((), dtype=torch.int64)
    # scalar_tensor keeps a symbolic gap symbolic under torch.export (as_tensor would fix it at
    # the example's 0)
    return torch.stack([zero, torch.scalar_tensor(gap, dtype=torch.int64), zero, zero, zero, zero])


def additive_masks(spec, t: int, attention_mask: torch.Tensor, dtype: torch.dtype) -> dict:
    """{window: additive mask [T, total]} (total = attention_mask's width), one per distinct
    `spec.layer_window` (None = full causal). Query i sits at position total-T+i; a key is
    visible iff it is at or before the query, inside the window if any, and not padding."""
    total = attention_mask.shape[1]
    key_pos = torch.arange(total, device=attention_mask.device)
    query_pos = torch.arange(t, device=attention_mask.device) + (total - t)
    not_padding = attention_mask[0].bool()[None, :]
    windows = sorted({spec.layer_window(i) for i in range(spec.num_layers)}, key=lambda w: w or 0)
    return {w: additive_mask(visible_keys(query_pos, key_pos, w) & not_padding, dtype) for w in windows}


class OnnxDecoder(nn.Module):
    """The decoder with its layers' states as past inputs and present outputs, in GenAI's
    layout: a KV cache [1, kv_heads, seq, head_dim] per attention layer, a conv state
    [1, channels, kernel-1] per conv layer, a conv state and a recurrent matrix state
    [1, value_heads, key_dim, value_dim] (float32) per delta layer, in the order of
    formats.onnx.past_names.

    Positions come from `position_ids`: rotary cos/sin gathered from one max_seq_len table
    per kind (Gemma 3's sliding layers have their own base), learned position embeddings
    (GPT-2) gathered likewise. The causal mask comes from shapes (query i sits at P+i and
    sees keys 0..P+i; one later with GenAI's gap, GENAI_GAP), combined with `attention_mask`
    for padded keys; sliding layers get a
    second mask that also hides keys at or before query - window. Both are built once per
    forward and shared by the layers; the cache stays full length. A conv layer runs the
    decoder's own CausalConv on the past conv state it is fed (zeros at position 0, from the
    runtime) and returns the state after these tokens as its present; a delta layer does the
    same with its conv, then runs the decoder's gated_delta_rule from its past matrix state,
    whose result after these tokens is its other present. The rule is one chunk of plain
    matmuls over all T tokens (exact for any T <= max_seq_len), so prefill needs no loop.
    """

    def __init__(self, decoder: Decoder, max_seq_len: int):
        super().__init__()
        spec = decoder.spec
        self.decoder = decoder
        self.max_seq_len = max_seq_len
        self.dtype = decoder.embed_tokens.weight.dtype
        # layer -> positions of its state's tensors in `past` (and of their presents)
        self.state_slots: dict[int, list[int]] = {}
        slot = 0
        for i in range(spec.num_layers):
            count = len(layer_state_names(spec, i))
            self.state_slots[i] = list(range(slot, slot + count))
            slot += count
        for kind, (cos, sin) in rotary_tables(spec, max_seq_len).items():
            self.register_buffer(f"rope_cos_{kind}", cos.to(self.dtype), persistent=False)
            self.register_buffer(f"rope_sin_{kind}", sin.to(self.dtype), persistent=False)

    def forward(self, input_ids, attention_mask, position_ids, past: list[torch.Tensor]):
        spec = self.decoder.spec
        t = input_ids.shape[1]
        positions = position_ids[0]
        rope = {
            kind: (getattr(self, f"rope_cos_{kind}").index_select(0, positions),
                   getattr(self, f"rope_sin_{kind}").index_select(0, positions))
            for kind in spec.rope_kinds
        }

        masks = additive_masks(spec, t, attention_mask, self.dtype)
        pads = gap_pads(attention_mask.shape[1] - past[self.state_slots[spec.attention_layers[0]][0]].shape[2] - t)
        scale, softcap = spec.attention_scale, spec.attention_softcap or 0.0
        presents: list[torch.Tensor | None] = [None] * len(past)

        def attend(i, q, k, v):
            key, value = self.state_slots[i]
            out, presents[key], presents[value] = torch.ops.mobilekit_onnx.attention(
                q, k, v, masks[spec.layer_window(i)], past[key], past[value], pads, scale, softcap
            )
            return out

        def convolve(i, x, conv):
            state = self.state_slots[i][0]  # a delta layer's conv state comes before its matrix
            out, presents[state] = conv(x, past[state])
            return out

        def recur(i, q, k, v, g, beta):
            state = self.state_slots[i][1]
            out, presents[state] = gated_delta_rule(q, k, v, g, beta, past[state], self.max_seq_len)
            return out

        logits = self.decoder(input_ids, rope, attend, positions=positions, convolve=convolve, recur=recur)
        return (logits.float(), *presents)


def example_inputs(spec, dtype: torch.dtype):
    """input_ids, attention_mask, position_ids and the pasts, in the order of past_names."""
    # T=2, P=3: neither is 0 or 1, so export does not specialize them.
    t, p = 2, 3
    past = []
    for state in layer_states(spec):
        if state["kind"] == "kv":  # one key and one value, each with that layer's kv heads (OpenELM's differ)
            past += [torch.zeros(1, state["kv_heads"], p, state["head_dim"], dtype=dtype) for _ in range(2)]
            continue
        past.append(torch.zeros(state["shape"], dtype=dtype))
        if state["kind"] == "delta":  # the matrix state is float32 under every scheme (formats.onnx)
            past.append(torch.zeros(state["recurrent_shape"], dtype=torch.float32))
    return (
        torch.zeros(1, t, dtype=torch.long),
        torch.ones(1, p + t, dtype=torch.long),
        torch.arange(p, p + t).unsqueeze(0),
        past,
    )
