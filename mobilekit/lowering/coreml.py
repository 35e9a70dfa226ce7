"""Core ML's export-time forms of the decoder, which mobilekit.targets.coreml converts: the
stateful wrapper `CoreMLDecoder` and the fp16-safe norms applied while the decoder is traced;
and the mapping of the converted program's weights back onto the decoder's names. (The tests
also run the wrapper eagerly: tests/coreml_helpers.py.)

The I/O names and cache layout are the Core ML format's (mobilekit.formats.coreml).
"""

from __future__ import annotations

import copy

import numpy as np
import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from mobilekit.errors import ExportError, ValidationFailed
from mobilekit.lowering import Swap, replace_modules, restore_modules
from mobilekit.formats.coreml import (CONV_STATE, KEY_CACHE, MASKED_VALUE, RECURRENT_STATE, VALUE_CACHE,
                                      WRAPPED_DECODER, conv_state_shape, kv_cache_shape, recurrent_state_shape,
                                      state_rows)
from mobilekit.modeling import Decoder, rotary_tables
from mobilekit.modeling.decoder import LayerNorm, RMSNorm, gated_delta_rule, repeat_kv


# --- the module that is converted -------------------------------------------------------


class CoreMLDecoder(nn.Module):
    """The decoder with its states in fp16 buffers that coremltools turns into Core ML states
    (`state_names`): the KV cache keyCache/valueCache [attention layers, 1, kv_heads,
    max_seq_len, head_dim]; with conv layers (LFM2) or delta layers (Qwen3.5), convState [conv
    layers, 1, channels, kernel-1]; with delta layers, recurrentState [delta layers, 1, value
    heads, key dim, value dim]. Layer i uses row state_rows(spec)[i] of each of its kind's states.

    Sliding-window layers (Gemma 2/3) keep the same full-length cache: the app passes the
    plain causal mask, and the window (key > query - window) is added in the graph from the
    positions, so the cache is not smaller than max_seq_len for them."""

    def __init__(self, decoder: Decoder, max_seq_len: int):
        super().__init__()
        spec = decoder.spec
        setattr(self, WRAPPED_DECODER, decoder)
        self.max_seq_len = max_seq_len
        self.rope_kinds = tuple(spec.rope_kinds)
        for kind, (cos, sin) in rotary_tables(spec, max_seq_len).items():
            self.register_buffer(f"rope_cos_{kind}", cos, persistent=False)
            self.register_buffer(f"rope_sin_{kind}", sin, persistent=False)
        # Absolute positions 0..max_seq_len-1, sliced like the rotary tables: learned position
        # embeddings (GPT-2) gather them and the sliding-window masks compare them.
        self.register_buffer("positions", torch.arange(max_seq_len), persistent=False)
        self.windows = sorted({w for w in map(spec.layer_window, range(spec.num_layers)) if w})
        if not spec.attention_layers:
            # swift-transformers takes a model for a stateful one only if it has keyCache and
            # valueCache, and a Core ML state cannot have a zero-sized axis.
            raise ExportError("the Core ML target needs at least one attention layer (the keyCache/valueCache "
                              "states swift-transformers loads); this decoder has none")
        self.rows = state_rows(spec)
        # Core ML states are fp16 only (coremltools casts any other buffer dtype to fp16). One
        # state for all attention layers, as swift-transformers loads it: where layers differ
        # in kv heads (OpenELM), it is sized for the largest and layer i uses its first
        # layer_kv_heads(i). Conv and delta layers get no rows in it.
        shape = kv_cache_shape(spec, max_seq_len)
        self.register_buffer(KEY_CACHE, torch.zeros(shape, dtype=torch.float16))
        self.register_buffer(VALUE_CACHE, torch.zeros(shape, dtype=torch.float16))
        self.state_names = (KEY_CACHE, VALUE_CACHE)
        for name, state_shape in ((CONV_STATE, conv_state_shape(spec)), (RECURRENT_STATE, recurrent_state_shape(spec))):
            if state_shape:
                self.register_buffer(name, torch.zeros(state_shape, dtype=torch.float16))
                self.state_names += (name,)

    def forward(self, inputIds: torch.Tensor, causalMask: torch.Tensor) -> torch.Tensor:  # noqa: N803
        decoder: Decoder = getattr(self, WRAPPED_DECODER)
        spec = decoder.spec
        seq_len = inputIds.shape[1]
        end = causalMask.shape[-1]
        start = end - seq_len
        rope = {
            kind: (getattr(self, f"rope_cos_{kind}")[start:end], getattr(self, f"rope_sin_{kind}")[start:end])
            for kind in self.rope_kinds
        }
        positions = self.positions[start:end]
        # One additive mask per window size: the app's causal mask, with the keys that fell
        # out of the window (key <= query - window, modeling.decoder.attention_mask's window
        # test) masked too. Not through attention_mask itself: its `causal & in_window` is a
        # bool `and`, which coremltools 9 cannot convert; the app's mask is already causal.
        masks = {None: causalMask}
        if self.windows:
            too_far = self.positions[:end][None, :] - positions[:, None]  # key - query, [T, end]
            for window in self.windows:
                masks[window] = torch.where(too_far <= -window, MASKED_VALUE, causalMask)
        softcap = spec.attention_softcap
        # Core ML's fused scaled_dot_product_attention (iOS 18) has no scale argument, and
        # coremltools decomposes any SDPA that passes one: fold a non-default scale into q.
        q_scale = spec.attention_scale * math.sqrt(spec.head_dim)
        key_cache, value_cache = getattr(self, KEY_CACHE), getattr(self, VALUE_CACHE)
        rows = self.rows

        def attend(i, q, k, v):
            q = q.transpose(1, 2)  # [1, H, T, hd]
            kv, groups = spec.layer_kv_heads(i), spec.layer_heads(i) // spec.layer_kv_heads(i)
            r = rows[i]
            key_cache[r : r + 1, :, :kv, start:end, :] = k.transpose(1, 2).unsqueeze(0).to(key_cache.dtype)
            value_cache[r : r + 1, :, :kv, start:end, :] = v.transpose(1, 2).unsqueeze(0).to(value_cache.dtype)
            keys = repeat_kv(key_cache[r, :, :kv, :end, :].to(q.dtype), groups)
            values = repeat_kv(value_cache[r, :, :kv, :end, :].to(q.dtype), groups)
            mask = masks[spec.layer_window(i)].to(q.dtype)
            if softcap is None:
                if not math.isclose(q_scale, 1.0, rel_tol=1e-9):
                    q = q * q_scale
                out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
            else:
                # Gemma 2: modeling.decoder.softcap, capped before the mask; SDPA cannot cap,
                # so these layers spell attention out. Its factor (scale / cap) goes on q
                # before the product rather than on the scores after it: under fp16 compute
                # q.k itself could leave fp16's range.
                scores = torch.tanh((q * (spec.attention_scale / softcap)) @ keys.transpose(-1, -2)) * softcap
                out = torch.softmax(scores + mask, dim=-1) @ values
            return out.transpose(1, 2).reshape(1, seq_len, -1)

        # A call that starts at position 0 begins a new sequence. The KV cache needs no
        # clearing for it (the mask hides rows past `end`), but a conv or delta layer reads its
        # whole stored state: a reused MLState would feed it the last sequence's inputs (or
        # matrices). Apps make a fresh state per conversation (swift-transformers' resetState,
        # the demo apps, mobilekit's sessions), yet nothing in Core ML enforces that, so the
        # model reads its past as zeros itself there, from the positions (start comes from
        # the mask's shape): one select over a layer's row per state. A select rather than a
        # multiply by 0, which would turn a stale inf into NaN; its zeros become one small
        # const per state (a row's shape, shared by the layers).
        convolve = recur = None
        if spec.conv_layers:  # delta layers among them
            continues = positions[:1] > 0
            convolve = self._convolve(continues)
            recur = self._recur(continues) if spec.delta_layers else None
        return decoder(inputIds, rope, attend, positions=positions, convolve=convolve, recur=recur)

    def _convolve(self, continues: torch.Tensor):
        """The decoder's `convolve` over convState: layer i's row, read as zeros unless the
        call `continues` a sequence, replaced by the conv's present."""
        conv_state, rows = getattr(self, CONV_STATE), self.rows

        def convolve(i, x, conv):
            r = rows[i]
            past = torch.where(continues, conv_state[r], torch.zeros_like(conv_state[r]))
            out, present = conv(x, past)
            # reshaped to its (static) shape: coremltools sizes the last kernel-1 columns of
            # the T-long window symbolically, and a state update must match the state's type
            conv_state[r : r + 1] = present.reshape(conv_state[r : r + 1].shape).to(conv_state.dtype)
            return out

        return convolve

    def _recur(self, continues: torch.Tensor):
        """The decoder's `recur` over recurrentState, as `_convolve` over convState: layer i's
        matrices, zeros unless the call `continues` a sequence, through gated_delta_rule (with
        max_seq_len: any call's T fits its fixed graph), replaced by the ones it returns."""
        state, rows, max_len = getattr(self, RECURRENT_STATE), self.rows, self.max_seq_len

        def recur(i, q, k, v, g, beta):
            r = rows[i]
            past = torch.where(continues, state[r], torch.zeros_like(state[r]))
            out, present = gated_delta_rule(q, k, v, g, beta, past.to(q.dtype), max_len)
            state[r : r + 1] = present.reshape(state[r : r + 1].shape).to(state.dtype)
            return out

        return recur


# --- fp16-safe norms ----------------------------------------------------------------------
# Under Core ML's fp16 compute the decoder's `x.float()` is a no-op, and x^2 overflows fp16
# (max 65504) on the massive activations of trained LMs (SmolLM2-135M carries |x| ~ 2.5e4 on
# the first token from layer 12 on; GPT-2 style models carry thousands): the row normalizes
# to 0 (RMSNorm) or inf/NaN (a variance computed in fp16), and top-1 agreement collapses (4%
# in a torch fp16 simulation of SmolLM2). Dividing by max|x| first keeps every intermediate
# in range; in exact arithmetic each form is the same function. Core ML's own layer_norm op
# gives no guarantee of wider accumulation on every compute unit (the ANE computes in fp16),
# so LayerNorm is spelled out the same way rather than left to F.layer_norm.


def _eps_over_square(eps: float, s: torch.Tensor) -> torch.Tensor:
    # eps / s^2 in two divisions, each result in fp16's normal range for any sensible s.
    # `eps / s` would export as reciprocal(s) * eps, which Core ML computes as
    # 1 / (s + 1e-4) (its `inverse` op's default epsilon).
    return torch.full_like(s, eps) / s / s


def _fp16_safe_rms_norm(self: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    s = x.abs().amax(-1, keepdim=True).clamp_min(1e-6)
    y = x / s
    normed = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + _eps_over_square(self.eps, s))
    return self.weight * normed


def _fp16_safe_layer_norm(self: LayerNorm, x: torch.Tensor) -> torch.Tensor:
    s = x.abs().amax(-1, keepdim=True).clamp_min(1e-6)
    y = x / s
    centered = y - y.mean(-1, keepdim=True)
    normed = centered * torch.rsqrt(centered.pow(2).mean(-1, keepdim=True) + _eps_over_square(self.eps, s))
    y = normed * self.weight
    return y if self.bias is None else y + self.bias  # gain-only LayerNorm (open_lm) has no bias


FP16_SAFE_NORMS = {RMSNorm: _fp16_safe_rms_norm, LayerNorm: _fp16_safe_layer_norm}


def _check_fp16_safe_form(norm: nn.Module, safe) -> None:
    # If the decoder's norm ever changes (offset, different eps handling), refuse rather than
    # diverge. Weights and bias are randomized in a copy so that a lost term shows.
    probe_norm = copy.deepcopy(norm).float()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in probe_norm.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
    probe = torch.randn(3, probe_norm.weight.shape[0], generator=gen) * 50
    with torch.no_grad():
        want, got = probe_norm(probe).float(), safe(probe_norm, probe).float()
    if not torch.allclose(want, got, rtol=1e-3, atol=1e-3):
        raise ExportError(
            f"mobilekit.modeling.{type(norm).__name__} no longer matches the Core ML target's fp16-safe "
            f"form ({safe.__name__} in mobilekit/lowering/coreml.py): update that function"
        )


class FP16SafeNorm(nn.Module):
    """A norm in its fp16-safe form (FP16_SAFE_NORMS), holding the norm's own parameters
    under the same attribute names, so the decoder's state_dict keys, and with them the
    converted program's weight names, stay as they were."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.safe_form = FP16_SAFE_NORMS[type(norm)]
        self.eps, self.weight = norm.eps, norm.weight
        if isinstance(norm, LayerNorm):
            self.bias = norm.bias  # None for open_lm's gain-only norms

    def forward(self, x):
        return self.safe_form(self, x)


def _fp16_safe_form(module: nn.Module) -> nn.Module | None:
    return FP16SafeNorm(module) if type(module) in FP16_SAFE_NORMS else None


def _check_fp16_safe_forms(decoder: Decoder) -> None:
    for kind, safe in FP16_SAFE_NORMS.items():
        first = next((m for m in decoder.modules() if type(m) is kind), None)
        if first is not None:
            _check_fp16_safe_form(first, safe)


def apply_fp16_safe_norms(decoder: Decoder) -> list[Swap]:
    """Swap the decoder's RMSNorms and LayerNorms (q/k norms over head_dim included) for
    their fp16-safe forms, in place (lowering.replace_modules); returns the swaps."""
    _check_fp16_safe_forms(decoder)
    return replace_modules(decoder, _fp16_safe_form)


@contextmanager
def fp16_safe_norms(decoder: Decoder, enabled: bool = True):
    """The fp16-safe norms while the decoder is traced; the originals again on exit."""
    swapped = apply_fp16_safe_norms(decoder) if enabled else []
    try:
        yield
    finally:
        restore_modules(swapped)


# --- ops coremltools converts only with static sizes -----------------------------------------
# coremltools 9 converts torch.eye by folding np.eye(n) into a const, so it needs n known at
# conversion: gated_delta_rule's identity is T x T for the call's dynamic T, and the
# conversion fails ("'NoneType' object cannot be interpreted as an integer"). While the
# decoder is traced, eye(n) is spelled out as what it is, arange(n) compared with itself.


class _SpelledOutEye(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.eye and len(args) == 1 and set(kwargs) <= {"dtype", "device"}:
            rows = torch.arange(args[0], device=kwargs.get("device"))
            return (rows[:, None] == rows[None, :]).to(kwargs.get("dtype") or torch.get_default_dtype())
        return func(*args, **kwargs)


@contextmanager
def eye_spelled_out():
    """torch.eye(n) (square; dtype and device as given) as arange(n)[:, None] == arange(n)[None, :],
    cast to its dtype, for the duration of the block: the same matrix, at any symbolic n."""
    with _SpelledOutEye():
        yield


# --- weight names in the converted program --------------------------------------------------
# The export records which decoder weights have no const of their own in the package (folded
# away by the converter, or merged by its const deduplication), and tests read a package's
# weights back: both map the program's consts onto the decoder's parameter names.

# Suffixes coremltools appends to a weight's name as passes rewrite it (fp16 cast,
# compression); stripped to recover the torch.export placeholder name p_decoder_<key>.
WEIGHT_NAME_SUFFIXES = ("_to_fp16", "_to_fp32", "_quantized", "_palettized", "_sparsified", "_dequantized")
PARAM_PREFIX = "p_decoder_"
# constexpr ops that turn stored data into a weight (iOS 16 and iOS 18 opsets)
DEQUANTIZING_OPS = (
    "constexpr_blockwise_shift_scale",
    "constexpr_lut_to_dense",
    "constexpr_affine_dequantize",
    "constexpr_sparse_to_dense",
)
# A parameter the decoder adds to a bias-free linear's output (a delta layer's dt_bias, after
# in_proj_a): coremltools fuses the add into that linear as its bias. key suffix -> the
# linear's module suffix.
ADDED_BIASES = {".delta.dt_bias": ".delta.in_proj_a"}
# A parameter the decoder transforms on its own before it meets an activation: coremltools
# folds the transform into one const of the result, named after the op, and the parameter's
# name is gone (a delta layer's A_log reaches the program only as its decay rate -exp(A_log)).
# key suffix -> (the transform, its inverse), elementwise in numpy, as coremltools folds it.
FOLDED_FORMS = {".delta.A_log": (lambda w: -np.exp(w), lambda c: np.log(-c))}


def _base_name(name: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for suffix in WEIGHT_NAME_SUFFIXES:
            if name.endswith(suffix):
                name, stripped = name[: -len(suffix)], True
    return name


def param_name(key: str) -> str:
    """The torch.export placeholder name of decoder weight `key` inside CoreMLDecoder."""
    return PARAM_PREFIX + key.replace(".", "_")


def _consumers(op):
    return [c for out in op.outputs for c in out.child_ops]


def weight_ops(program) -> dict:
    """name -> op for every op that yields a weight tensor a compute op reads: float consts
    and dequantizing constexpr ops (their data/scale consts are not listed)."""
    from coremltools.converters.mil.mil import types

    found = {}
    for op in program.functions["main"].operations:
        if op.op_type in DEQUANTIZING_OPS:
            found[op.name] = op
        elif op.op_type == "const":
            out = op.outputs[0]
            if out.rank >= 1 and types.is_float(out.dtype) and any(
                not c.op_type.startswith("constexpr_") for c in _consumers(op)
            ):
                found[op.name] = op
    return found


def _tied_groups(decoder: Decoder) -> list[list[str]]:
    """state_dict keys grouped by the parameter they name (tied embeddings share one)."""
    groups: dict[int, list[str]] = {}
    for key, tensor in decoder.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(key)
    return list(groups.values())


def _shape(decoder: Decoder, key: str) -> tuple[int, ...]:
    return tuple(decoder.state_dict(keep_vars=True)[key].shape)


def map_weights(program, decoder: Decoder) -> tuple[dict[str, object], list[str]]:
    """Map decoder state_dict keys to the MIL ops that hold their values.

    By name first (coremltools keeps torch.export's `p_decoder_<key>` and appends pass
    suffixes); then, for keys still unresolved, linear weights by the order of `linear`
    ops in the graph and the embeddings by the one `gather` over a table of their shape,
    each checked by shape; then a linear's bias by the bias input of the `linear` op its
    weight was found in (which also finds a bias that coremltools' const deduplication
    merged into an identical one), and so an ADDED_BIASES parameter by the linear it follows.
    Returns (key -> op, keys with no op; FOLDED_FORMS parameters are always among them)."""
    ops = weight_ops(program)
    by_base: dict[str, object] = {}
    for name, op in ops.items():
        by_base.setdefault(_base_name(name), op)
    state = decoder.state_dict(keep_vars=True)
    sources: dict[str, object] = {}
    unresolved: list[list[str]] = []
    for group in _tied_groups(decoder):
        op = next((by_base[param_name(k)] for k in group if param_name(k) in by_base), None)
        if op is None:
            unresolved.append(group)
            continue
        for k in group:
            sources[k] = op

    def assign(key, op):
        for g in unresolved:
            if key in g:
                for kk in g:
                    sources[kk] = op

    main = program.functions["main"]
    claimed = {id(op) for op in sources.values()}
    linear_modules = [n for n, m in decoder.named_modules() if isinstance(m, nn.Linear)]
    if unresolved:
        # linear weights in execution order (module registration order is forward order)
        pending = {k for g in unresolved for k in g}
        want = [f"{n}.weight" for n in linear_modules if f"{n}.weight" in pending]
        have = [
            op.weight.op
            for op in main.operations
            if op.op_type == "linear" and op.weight.op is not None and id(op.weight.op) not in claimed
            and op.weight.op.name in ops
        ]
        if want and len(want) == len(have) and all(
            tuple(o.outputs[0].shape) == _shape(decoder, k) for k, o in zip(want, have)
        ):
            for k, o in zip(want, have):
                assign(k, o)
                claimed.add(id(o))
        embed_keys = [f"{n}.weight" for n, m in decoder.named_modules() if isinstance(m, nn.Embedding)]
        for k in embed_keys:
            if k in sources:
                continue
            tables = [
                op.x.op for op in main.operations
                if op.op_type == "gather" and op.x.op is not None and op.x.op.name in ops
                and id(op.x.op) not in claimed and tuple(op.x.shape) == _shape(decoder, k)
            ]
            if len(tables) == 1:
                assign(k, tables[0])
                claimed.add(id(tables[0]))

    weight_of_bias = {f"{n}.bias": f"{n}.weight" for n in linear_modules}
    weight_of_bias.update({key: key.removesuffix(added) + linear + ".weight" for key in state
                           for added, linear in ADDED_BIASES.items() if key.endswith(added)})
    pending_biases = {k: w for k, w in weight_of_bias.items() if k in state and k not in sources}
    if pending_biases:
        linear_by_weight = {
            id(op.weight.op): op for op in main.operations if op.op_type == "linear" and op.weight.op is not None
        }
        for key in sorted(pending_biases):
            weight = sources.get(pending_biases[key])
            linear = linear_by_weight.get(id(weight)) if weight is not None else None
            bias = linear.bias.op if linear is not None and linear.bias is not None else None
            if bias is not None and bias.name in ops and tuple(bias.outputs[0].shape) == _shape(decoder, key):
                sources[key] = bias

    for key, op in sources.items():
        if tuple(op.outputs[0].shape) != tuple(state[key].shape):
            raise ValidationFailed(
                f"Core ML weight {op.name} has shape {tuple(op.outputs[0].shape)} but decoder weight "
                f"{key} has {tuple(state[key].shape)}: the package does not belong to this decoder spec"
            )
    missing = [k for k in state if k not in sources]
    return sources, missing


def identity_value(key: str) -> float:
    """The value that makes parameter `key` a no-op the converter may fold away: 0 for a
    bias (an add of zeros), 1 for a weight (a multiply by ones, e.g. an untrained norm)."""
    return 0.0 if key.endswith(".bias") else 1.0


def shared_weights(decoder: Decoder, sources: dict[str, object], missing: list[str],
                   stored_dtype: torch.dtype = torch.float32) -> dict[str, str]:
    """For each `missing` key, a mapped key holding exactly the same tensor (at the
    precision the package stores), if there is one: coremltools' const deduplication keeps
    one const for equal tensors (say, two all-zero LayerNorm biases of 100+ elements), and
    its name is the other parameter's. Keys at their identity value are left to
    `identity_weights`, FOLDED_FORMS parameters (no const holds their own value) to
    `folded_weights`. missing key -> mapped key."""
    state = decoder.state_dict()
    found = {}
    for key in missing:
        if _folded_form(key) or bool(torch.all(state[key] == identity_value(key))):
            continue
        value = state[key].to(stored_dtype)
        for other in sources:
            if state[other].shape == value.shape and torch.equal(state[other].to(stored_dtype), value):
                found[key] = other
                break
    return found


def _folded_form(key: str):
    """(transform, inverse) of FOLDED_FORMS for parameter `key`, or None."""
    return next((forms for suffix, forms in FOLDED_FORMS.items() if key.endswith(suffix)), None)


def folded_weights(program, decoder: Decoder, missing: list[str],
                   stored_dtype: torch.dtype = torch.float32) -> dict[str, str]:
    """For each `missing` FOLDED_FORMS parameter, the weight const of `program` holding
    exactly its transform at the precision the package stores (computed in fp32 numpy, as
    coremltools folds it), if one does. missing key -> const op name."""
    state = decoder.state_dict()
    stored = np.float16 if stored_dtype == torch.float16 else np.float32
    consts = [op for op in weight_ops(program).values() if op.op_type == "const"]
    found = {}
    for key in missing:
        forms = _folded_form(key)
        if forms is None:
            continue
        want = forms[0](state[key].float().numpy()).astype(stored)
        match = next((op for op in consts if np.array_equal(np.asarray(op.outputs[0].val), want)
                      and np.asarray(op.outputs[0].val).dtype == want.dtype), None)
        if match is not None:
            found[key] = match.name
    return found


def unfold(key: str, value: np.ndarray) -> np.ndarray:
    """FOLDED_FORMS parameter `key` from the value of the const holding its transform."""
    return _folded_form(key)[1](np.asarray(value, dtype=np.float32))


def identity_weights(decoder: Decoder, missing: list[str]) -> list[str]:
    """`missing` if every one of them holds its identity value (ones for a weight, zeros for
    a bias: the converter folds away a multiply by ones or an add of zeros); otherwise an
    ExportError naming the rest. A FOLDED_FORMS parameter is never an identity: its
    transform is no no-op at any value."""
    state = decoder.state_dict()
    lost = [k for k in missing if _folded_form(k) or not bool(torch.all(state[k] == identity_value(k)))]
    if lost:
        raise ExportError(
            f"the Core ML program has no weight for decoder parameters {lost}; the weight mapping "
            "(mobilekit.runtime.coreml.map_weights) does not understand this program"
        )
    return sorted(missing)


def materialize(op) -> np.ndarray:
    """The weight an op yields: dequantized for constexpr ops, plain for consts."""
    if op.op_type == "const":
        return np.asarray(op.outputs[0].val)
    return np.asarray(op.materialized_val_inference())
