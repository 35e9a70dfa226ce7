"""Core ML target: a stateful `model.mlpackage` (iOS 18 / macOS 15) in the shape that
swift-transformers' `LanguageModelWithStatefulKVCache` loads.

Contract (names exactly as swift-transformers' `LanguageModel.Keys` spells them):
  inputs   inputIds    int32 [1, T]                 T in 1..max_seq_len (RangeDim)
           causalMask  fp16  [1, 1, T, past+T]      additive: 0 = attend, -65504 = masked
  output   logits      [1, T, vocab]                fp16 (fp32 for the fp32 scheme)
  states   keyCache, valueCache  fp16 [layers, 1, kv_heads, max_seq_len, head_dim]
The model reads its positions from the mask's shape (end = causalMask.shape[-1],
start = end - T) and writes k/v with a slice update `cache[..., start:end, :]`, the form
coremltools converts into `slice_update` + `coreml_update_state` (`index_copy` does not
convert). swift-transformers only checks that logits has rank 3; it reads any float type.
The mask is plain causal for every layer: sliding-window layers (Gemma 2/3) mask the keys
that left their window themselves, from the positions, and keep a full-length cache like
the others (manifest io.kv_cache.sliding_window says which layers, and that the cache is not
smaller). Gemma 2's softcapped layers compute attention as matmul/tanh/softmax; every other
layer uses Core ML's fused scaled_dot_product_attention.

Core ML cannot execute on Linux. There, `open_session` and `generate` run the saved
package's MIL program through mobilekit's evaluator (`mobilekit.runtime.mil_evaluator`: op
by op in numpy, states held between calls, fp16 where the program computes in fp16), and
`check_spec` checks the I/O contract; on macOS both run the real model.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from types import MethodType
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mobilekit.errors import BundleError, ExportError, TargetUnavailable, ValidationFailed
from mobilekit.lowering import stage, tanh_gelu_spelled_out
from mobilekit.modeling import Decoder, rotary_tables
from mobilekit.modeling.decoder import LayerNorm, RMSNorm, repeat_kv
from mobilekit.quantize import no_quantization, quantizer
from mobilekit.targets import Artefact, ExportRequest, GenerationResult, Target

MODEL_FILE = "model.mlpackage"
INPUT_IDS, CAUSAL_MASK, LOGITS = "inputIds", "causalMask", "logits"
KEY_CACHE, VALUE_CACHE = "keyCache", "valueCache"
DEPLOYMENT_TARGET = "iOS18"  # = macOS15; stateful models need it
SPEC_VERSION_IOS18 = 9  # Model.specificationVersion that coremltools writes for iOS18
WRAPPED_DECODER = "decoder"  # attribute name: torch.export lifts weights as p_decoder_<key>
METADATA_IDENTITY_WEIGHTS = "mobilekit.identity_weights"
METADATA_SHARED_WEIGHTS = "mobilekit.shared_weights"
METADATA_SCHEME = "mobilekit.scheme"
METADATA_MAX_SEQ_LEN = "mobilekit.max_seq_len"
# {"window", "layers"} or null: the sliding-window layers masked inside the model
METADATA_SLIDING_WINDOW = "mobilekit.sliding_window"

COMPUTE_PRECISION = {"fp16": "float16", "fp32": "float32", "int8": "float16", "int4": "float16"}
# The ANE computes in fp16 only, so the fp16-compute schemes target it. The fp32 scheme exists
# to be the near-exact artefact: "cpuOnly" is the one unit whose fp32 path is fp32 on every
# device (the ANE would drop to fp16; GPU numerics differ between GPU families).
COMPUTE_UNITS = {"fp16": "cpuAndNeuralEngine", "int8": "cpuAndNeuralEngine", "int4": "cpuAndNeuralEngine",
                 "fp32": "cpuOnly"}
# Weight storage the schemes promise; check_spec verifies it in the saved program.
QUANTIZED_DTYPE = {"int8": "int8", "int4": "int4"}
INT4_BLOCK_SIZE = 32
# coremltools' default: tensors of at most this many elements (norm weights, tiny projections)
# stay fp16 in the quantized schemes.
QUANTIZE_WEIGHT_THRESHOLD = 2048
# An additive mask's "masked" value: fp16's lowest, what swift-transformers writes.
MASKED_VALUE = -65504.0


def _coremltools():
    try:
        import coremltools
    except ImportError as e:
        raise TargetUnavailable(f"coremltools is not installed ({e}): pip install 'mobilekit[coreml]'") from e
    return coremltools


# --- the module that is converted -------------------------------------------------------


class CoreMLDecoder(nn.Module):
    """The decoder with its KV cache in two fp16 buffers that coremltools turns into the
    states keyCache/valueCache [layers, 1, kv_heads, max_seq_len, head_dim].

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
        # Core ML states are fp16 only (coremltools casts any other buffer dtype to fp16). One
        # state for all layers, as swift-transformers loads it: where layers differ in kv heads
        # (OpenELM), it is sized for the largest and layer i uses its first layer_kv_heads(i).
        shape = (spec.num_layers, 1, spec.num_kv_heads, max_seq_len, spec.head_dim)
        self.register_buffer(KEY_CACHE, torch.zeros(shape, dtype=torch.float16))
        self.register_buffer(VALUE_CACHE, torch.zeros(shape, dtype=torch.float16))

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
        # out of the window (key <= query - window) masked too.
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

        def attend(i, q, k, v):
            q = q.transpose(1, 2)  # [1, H, T, hd]
            kv, groups = spec.layer_kv_heads(i), spec.layer_heads(i) // spec.layer_kv_heads(i)
            key_cache[i : i + 1, :, :kv, start:end, :] = k.transpose(1, 2).unsqueeze(0).to(key_cache.dtype)
            value_cache[i : i + 1, :, :kv, start:end, :] = v.transpose(1, 2).unsqueeze(0).to(value_cache.dtype)
            keys = repeat_kv(key_cache[i, :, :kv, :end, :].to(q.dtype), groups)
            values = repeat_kv(value_cache[i, :, :kv, :end, :].to(q.dtype), groups)
            mask = masks[spec.layer_window(i)].to(q.dtype)
            if softcap is None:
                if not math.isclose(q_scale, 1.0, rel_tol=1e-9):
                    q = q * q_scale
                out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
            else:
                # Gemma 2: scores = c * tanh(s * q.k / c), capped before the mask; SDPA cannot
                # cap, so these layers spell attention out. The scale goes on q first, which
                # keeps q.k in range under fp16 compute.
                scores = torch.tanh((q * (spec.attention_scale / softcap)) @ keys.transpose(-1, -2)) * softcap
                out = torch.softmax(scores + mask, dim=-1) @ values
            return out.transpose(1, 2).reshape(1, seq_len, -1)

        return decoder(inputIds, rope, attend, positions=positions)


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
    import copy

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
            f"form ({safe.__name__} in mobilekit/targets/coreml.py): update that function"
        )


def apply_fp16_safe_norms(decoder: Decoder) -> list[nn.Module]:
    """Swap the decoder's RMSNorms and LayerNorms (q/k norms over head_dim included) for
    their fp16-safe forms, in place; returns those swapped."""
    norms = [m for m in decoder.modules() if type(m) in FP16_SAFE_NORMS]
    for kind, safe in FP16_SAFE_NORMS.items():
        first = next((m for m in norms if type(m) is kind), None)
        if first is not None:
            _check_fp16_safe_form(first, safe)
    for m in norms:
        m.forward = MethodType(FP16_SAFE_NORMS[type(m)], m)
    return norms


@contextmanager
def fp16_safe_norms(decoder: Decoder, enabled: bool = True):
    """The fp16-safe norms while the decoder is traced; the originals again on exit."""
    norms = apply_fp16_safe_norms(decoder) if enabled else []
    try:
        yield
    finally:
        for m in norms:
            del m.forward


# --- quantization -----------------------------------------------------------------------


def quantization_config(scheme: str, program=None):
    """coremltools OptimizationConfig for `scheme` (int8 / int4), or None for fp16 / fp32.

    int8: linear_symmetric int8 per output channel, every weight above the size threshold.
    int4: linear_symmetric int4 in blocks of 32 along the input axis; embedding tables
    (gather inputs, which with tied embeddings is also the lm head) stay int8 per row, as
    the int4 scheme promises ("embeddings 8-bit"). `program` (the MIL program) is needed
    to find them."""
    if scheme not in QUANTIZED_DTYPE:
        return None
    _coremltools()
    import coremltools.optimize.coreml as cto

    int8 = cto.OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=QUANTIZE_WEIGHT_THRESHOLD
    )
    if scheme == "int8":
        return cto.OptimizationConfig(global_config=int8)
    int4 = cto.OpLinearQuantizerConfig(
        mode="linear_symmetric",
        dtype="int4",
        granularity="per_block",
        block_size=INT4_BLOCK_SIZE,
        weight_threshold=QUANTIZE_WEIGHT_THRESHOLD,
    )
    # A const feeding both a gather and a linear (tied embeddings) must get one config: set
    # it on the const itself.
    embedding_consts = {}
    if program is not None:
        for op in program.functions["main"].operations:
            if op.op_type == "gather" and op.x.op is not None and op.x.op.op_type == "const" and op.x.rank == 2:
                embedding_consts[op.x.op.name] = int8
    return cto.OptimizationConfig(global_config=int4, op_name_configs=embedding_consts)


@quantizer("coreml", "int8", "int4")
def quantize_weights(mlmodel, scheme: str, plan=None):
    """The model with its weights quantized per `scheme` (coremltools.optimize)."""
    config = quantization_config(scheme, getattr(mlmodel, "_mil_program", None))
    import coremltools.optimize.coreml as cto
    import numpy as np

    # An all-zero row or block (a padding token's embedding row) gets scale 0, and coremltools
    # computes 0/0 for its data: numpy warns, the stored scale is 0 and the row dequantizes to
    # exactly 0, as it should.
    with np.errstate(divide="ignore", invalid="ignore"):
        return cto.linear_quantize_weights(mlmodel, config)


quantizer("coreml", "fp16", "fp32")(no_quantization)  # fp16 / fp32: the compute precision of the conversion


# --- the I/O contract -------------------------------------------------------------------


def sliding_window_layout(spec) -> dict | None:
    """{"window", "layers"} of a spec with sliding-window layers (Gemma 2/3), else None; the
    package records it in its metadata and the manifest in io.kv_cache.sliding_window."""
    layers = [i for i in range(spec.num_layers) if spec.layer_window(i)]
    return {"window": spec.sliding_window, "layers": layers} if layers else None


def io_contract(spec, max_seq_len: int, scheme: str) -> dict:
    """What apps rely on: names, dtypes and shapes (symbolic dims as strings)."""
    cache_shape = [spec.num_layers, 1, spec.num_kv_heads, max_seq_len, spec.head_dim]
    logits_dtype = "float32" if scheme == "fp32" else "float16"
    kv_cache = {
        "kind": "Core ML states (slice_update at [past, past+T))",
        "layers": spec.num_layers,
        "kv_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "max_seq_len": max_seq_len,
        "shape": cache_shape,
        "dtype": "float16",
    }
    if not spec.uniform_kv_heads:
        kv_cache["kv_heads_per_layer"] = [spec.layer_kv_heads(i) for i in range(spec.num_layers)]
        kv_cache["per_layer_kv_heads"] = ("one state sized for the largest layer (kv_heads); layer i reads and writes "
                                          "its first kv_heads_per_layer[i] heads, the rest stay zero")
    window = sliding_window_layout(spec)
    if window:
        kv_cache["sliding_window"] = {
            **window,
            "cache": "full length: sliding layers keep all max_seq_len positions like the others (exact at any "
                     "context up to max_seq_len, but the cache is not smaller)",
            "mask": "applied inside the model from the positions (keys <= query - window are masked in the "
                    "sliding layers); the app passes the plain causal mask",
        }
    return {
        "inputs": [
            {"name": INPUT_IDS, "dtype": "int32", "shape": [1, "T"]},
            {"name": CAUSAL_MASK, "dtype": "float16", "shape": [1, 1, "T", "past+T"],
             "semantics": "additive (0 = attend, -65504 = masked), plain causal for every layer; positions are "
                          "past..past+T-1, read from the shape"},
        ],
        "outputs": [{"name": LOGITS, "dtype": logits_dtype, "shape": [1, "T", spec.vocab_size]}],
        "states": [
            {"name": KEY_CACHE, "dtype": "float16", "shape": cache_shape},
            {"name": VALUE_CACHE, "dtype": "float16", "shape": cache_shape},
        ],
        "dims": {"T": {"min": 1, "max": max_seq_len}, "past+T": {"min": 1, "max": max_seq_len}},
        "kv_cache": kv_cache,
        "loader": "swift-transformers LanguageModelWithStatefulKVCache",
    }


def _array_dtype(array_type) -> str:
    from coremltools.proto import FeatureTypes_pb2

    return FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array_type.dataType).lower()


def _ranges(array_type) -> list[tuple[int, int]] | None:
    if array_type.WhichOneof("ShapeFlexibility") == "shapeRange":
        return [(r.lowerBound, r.upperBound) for r in array_type.shapeRange.sizeRanges]
    if array_type.WhichOneof("ShapeFlexibility") is None:
        return [(d, d) for d in array_type.shape]
    return None  # enumerated shapes: swift-transformers refuses them for a stateful model


def check_spec(bundle_dir: Path, scheme: str, expected: dict | None = None) -> dict:
    """Check the saved package against the contract; raise ValidationFailed naming every
    mismatch. `expected` (layers, kv_heads, head_dim, max_seq_len, vocab_size, and
    optionally sliding_window as `sliding_window_layout` gives it) tightens the checks;
    without it the shapes are checked for consistency among themselves."""
    from mobilekit.runtime.coreml import load_program

    path = Path(bundle_dir) / MODEL_FILE
    if not path.exists():
        raise BundleError(f"{path} does not exist; re-run the export")
    if scheme not in COMPUTE_PRECISION:
        raise ValidationFailed(f"unknown Core ML scheme {scheme!r}; expected one of {', '.join(COMPUTE_PRECISION)}")
    program, spec_pb = load_program(path)
    problems: list[str] = []
    desc = spec_pb.description

    if spec_pb.specificationVersion != SPEC_VERSION_IOS18:
        problems.append(
            f"specificationVersion is {spec_pb.specificationVersion}, expected {SPEC_VERSION_IOS18} "
            f"(minimum deployment target {DEPLOYMENT_TARGET} / macOS15)"
        )
    if spec_pb.WhichOneof("Type") != "mlProgram":
        problems.append(f"model type is {spec_pb.WhichOneof('Type')}, expected mlProgram")

    def features(items):
        return {f.name: f for f in items}

    inputs, outputs, states = features(desc.input), features(desc.output), features(desc.state)
    if list(inputs) != [INPUT_IDS, CAUSAL_MASK]:
        problems.append(f"inputs are {list(inputs)}, expected [{INPUT_IDS!r}, {CAUSAL_MASK!r}]")
    if list(outputs) != [LOGITS]:
        problems.append(f"outputs are {list(outputs)}, expected [{LOGITS!r}]")
    if sorted(states) != sorted([KEY_CACHE, VALUE_CACHE]):
        problems.append(f"states are {list(states)}, expected [{KEY_CACHE!r}, {VALUE_CACHE!r}]")

    found: dict = {"inputs": [], "outputs": [], "states": []}
    state_shapes = []
    for name in (KEY_CACHE, VALUE_CACHE):
        if name not in states:
            continue
        arr = states[name].type.stateType.arrayType
        shape, dtype = list(arr.shape), _array_dtype(arr)
        found["states"].append({"name": name, "dtype": dtype, "shape": shape})
        state_shapes.append(shape)
        if dtype != "float16":
            problems.append(f"state {name} is {dtype}, expected float16")
        if len(shape) != 5 or shape[1] != 1:
            problems.append(f"state {name} has shape {shape}, expected [layers, 1, kv_heads, max_seq_len, head_dim]")
    if len(state_shapes) == 2 and state_shapes[0] != state_shapes[1]:
        problems.append(f"keyCache {state_shapes[0]} and valueCache {state_shapes[1]} differ in shape")
    cache_len = state_shapes[0][3] if state_shapes and len(state_shapes[0]) == 5 else None
    if expected and state_shapes:
        want = [expected["layers"], 1, expected["kv_heads"], expected["max_seq_len"], expected["head_dim"]]
        if state_shapes[0] != want:
            problems.append(f"state shape {state_shapes[0]} differs from the decoder's {want}")

    def check_input(name, dtype_want, want_ranges):
        if name not in inputs:
            return
        arr = inputs[name].type.multiArrayType
        dtype, ranges = _array_dtype(arr), _ranges(arr)
        found["inputs"].append({"name": name, "dtype": dtype, "ranges": ranges})
        if dtype != dtype_want:
            problems.append(f"input {name} is {dtype}, expected {dtype_want}")
        if ranges is None:
            problems.append(f"input {name} uses enumerated shapes; swift-transformers needs a RangeDim")
        elif ranges != want_ranges:
            problems.append(f"input {name} has shape ranges {ranges}, expected {want_ranges}")

    if cache_len:
        check_input(INPUT_IDS, "int32", [(1, 1), (1, cache_len)])
        check_input(CAUSAL_MASK, "float16", [(1, 1), (1, 1), (1, cache_len), (1, cache_len)])

    logits_want = "float32" if scheme == "fp32" else "float16"
    if LOGITS in outputs:
        dtype = _array_dtype(outputs[LOGITS].type.multiArrayType)
        out_var = program.functions["main"].outputs[0]
        shape = [d if isinstance(d, int) else "T" for d in out_var.shape]
        found["outputs"].append({"name": LOGITS, "dtype": dtype, "shape": shape})
        if dtype != logits_want:
            problems.append(f"output {LOGITS} is {dtype}, expected {logits_want}")
        if len(shape) != 3 or shape[0] != 1:
            problems.append(f"output {LOGITS} has shape {shape}, expected [1, T, vocab]")
        elif expected and shape[2] != expected["vocab_size"]:
            problems.append(f"output {LOGITS} has vocab {shape[2]}, expected {expected['vocab_size']}")

    # Sliding layers mask their window inside the model while the app passes a plain causal
    # mask: the package must say which layers do so, and say what the decoder says.
    raw_window = desc.metadata.userDefined.get(METADATA_SLIDING_WINDOW)
    window = json.loads(raw_window) if raw_window else None
    found["sliding_window"] = window
    if expected and "sliding_window" in expected and window != expected["sliding_window"]:
        problems.append(f"metadata {METADATA_SLIDING_WINDOW} is {window}, expected {expected['sliding_window']}")

    weights = _weight_storage(program)
    if scheme in QUANTIZED_DTYPE:
        want = QUANTIZED_DTYPE[scheme]
        if weights["quantized"].get(want, 0) == 0:
            problems.append(f"scheme {scheme} but no constexpr_blockwise_shift_scale op stores {want} weights")
        for name, count in weights["linear_weights_unquantized_large"].items():
            problems.append(f"linear weight {name} ({count} elements) is not quantized")
        if scheme == "int4" and weights["int4_block_sizes"] - {INT4_BLOCK_SIZE}:
            problems.append(f"int4 block sizes {sorted(weights['int4_block_sizes'])}, expected {INT4_BLOCK_SIZE}")
    elif weights["constexpr_ops"]:
        problems.append(f"scheme {scheme} should store plain weights but has {weights['constexpr_ops']}")
    fp_want = "fp32" if scheme == "fp32" else "fp16"
    wrong_fp = {k: v for k, v in weights["float"].items() if k != fp_want}
    if wrong_fp:
        problems.append(f"scheme {scheme} stores float weights as {wrong_fp}, expected {fp_want} only")

    if problems:
        raise ValidationFailed(f"{path} breaks the Core ML contract:\n  - " + "\n  - ".join(problems))
    return {
        "ok": True,
        "specification_version": spec_pb.specificationVersion,
        "deployment_target": f"{DEPLOYMENT_TARGET} / macOS15",
        **found,
        "weights": {
            "quantized": weights["quantized"],
            "float": weights["float"],
            "constexpr_ops": weights["constexpr_ops"],
            "int4_block_sizes": sorted(weights["int4_block_sizes"]),
        },
        "mil_op_types": mil_op_types(program),
    }


def _weight_storage(program) -> dict:
    """How the program stores its weights: quantized counts by dtype, float consts, and
    linear weights above the threshold that were left unquantized."""
    from coremltools.converters.mil.mil import types

    quantized: dict[str, int] = {}
    floats: dict[str, int] = {}
    constexpr: dict[str, int] = {}
    block_sizes: set[int] = set()
    unquantized = {}
    for op in program.functions["main"].operations:
        if op.op_type.startswith("constexpr_"):
            constexpr[op.op_type] = constexpr.get(op.op_type, 0) + 1
            data = op.inputs.get("data")
            if data is not None:
                name = types.builtin_to_string(data.dtype)
                quantized[name] = quantized.get(name, 0) + 1
                scale = op.inputs.get("scale")
                if name == "int4" and scale is not None and data.rank == 2 and scale.shape[1]:
                    block_sizes.add(data.shape[1] // scale.shape[1])
        elif op.op_type == "const" and op.outputs[0].rank >= 1 and types.is_float(op.outputs[0].dtype):
            name = types.builtin_to_string(op.outputs[0].dtype)
            if any(not c.op_type.startswith("constexpr_") for c in op.outputs[0].child_ops):
                floats[name] = floats.get(name, 0) + 1
        if op.op_type == "linear":
            w = op.weight
            if w.op is not None and w.op.op_type == "const" and math.prod(w.shape) > QUANTIZE_WEIGHT_THRESHOLD:
                unquantized[w.op.name] = math.prod(w.shape)
    return {"quantized": quantized, "float": floats, "constexpr_ops": constexpr,
            "int4_block_sizes": block_sizes, "linear_weights_unquantized_large": unquantized}


def mil_op_types(program) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in program.functions["main"].operations:
        counts[op.op_type] = counts.get(op.op_type, 0) + 1
    return dict(sorted(counts.items()))


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# --- the target -------------------------------------------------------------------------


class CoreMLTarget(Target):
    name = "coreml"
    default_scheme = "fp16"
    runtime = "Core ML (swift-transformers LanguageModelWithStatefulKVCache)"
    packages = ("coremltools", "torch")
    # Core ML states are fp16 only, so the fp32 artefact caches keys and values in fp16 and its
    # logits are not fp32-exact: through the evaluator, SmolLM2-135M fp32 is off by max |Δ|
    # 0.016 (cos >= 0.999999, top-1 and greedy 100%), and by 5.7e-5 with the states widened
    # to fp32 (the graph itself is exact). The max |Δ| bound moves to 0.05; a logit error that
    # large flips the top-1 of near-ties, so top-1 and greedy get fp16's gates (the tiny
    # Gemma 3 1B of `mobilekit matrix` flipped 1 of 80 positions at max |Δ| 0.0017 and its
    # greedy continuation after that). Cosine and perplexity keep fp32's bounds.
    budget_adjustments = {"fp32": {"max_abs_logit_error": 0.05, "min_top1_agreement": 0.9, "min_greedy_match": None}}
    # Measured: int4 conversion of a 1.1B model (4.4 GB fp32) peaked at 11.65 GB RSS.
    export_memory_factor = 2.65

    def check_available(self) -> None:
        _coremltools()

    def export(self, request: ExportRequest) -> Artefact:
        ct = _coremltools()
        import numpy as np
        from torch.export import Dim

        from mobilekit.runtime.coreml import identity_weights, map_weights, shared_weights

        self.check_scheme(request.scheme)
        seq = request.max_seq_len
        if seq < 8:
            raise ExportError(f"max_seq_len {seq} is too small for the Core ML target; use at least 8")
        spec = request.decoder.spec
        fp16 = COMPUTE_PRECISION[request.scheme] == "float16"
        module = CoreMLDecoder(request.decoder, seq).eval().requires_grad_(False)
        timings: dict[str, float] = {}

        # Export keeps T and past+T below the cache length: at == max_seq_len torch
        # specializes `cache[..., :end]` into a full view (guard `end != max_seq_len`). The
        # graph is the same slice for any end, so the Core ML inputs declare 1..max_seq_len.
        t_dim = Dim("T", min=1, max=seq - 1)
        end_dim = Dim("end", min=1, max=seq - 1)
        example = (torch.zeros(1, 2, dtype=torch.int32), torch.zeros(1, 1, 2, 5))
        with stage(timings, "torch_export_s", request.progress, "torch.export",
                   failing="torch.export of the Core ML decoder"), \
                torch.no_grad(), fp16_safe_norms(request.decoder, enabled=fp16), \
                tanh_gelu_spelled_out(request.decoder):
            program = torch.export.export(
                module, example, dynamic_shapes=({1: t_dim}, {2: t_dim, 3: end_dim}), strict=False
            )

        with stage(timings, "decompose_s", request.progress, "decompositions"):
            program = program.run_decompositions({})

        cache_shape = tuple(getattr(module, KEY_CACHE).shape)
        with stage(timings, "convert_s", request.progress,
                   f"coremltools.convert ({COMPUTE_PRECISION[request.scheme]} compute)", failing="coremltools.convert"):
            mlmodel = ct.convert(
                program,
                minimum_deployment_target=ct.target.iOS18,
                convert_to="mlprogram",
                compute_precision=ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32,
                inputs=[
                    ct.TensorType(name=INPUT_IDS, shape=(1, ct.RangeDim(1, seq, default=1)), dtype=np.int32),
                    ct.TensorType(
                        name=CAUSAL_MASK,
                        shape=(1, 1, ct.RangeDim(1, seq, default=1), ct.RangeDim(1, seq, default=1)),
                        dtype=np.float16,
                    ),
                ],
                outputs=[ct.TensorType(name=LOGITS, dtype=np.float16 if fp16 else np.float32)],
                states=[
                    ct.StateType(wrapped_type=ct.TensorType(shape=cache_shape, dtype=np.float16), name=KEY_CACHE),
                    ct.StateType(wrapped_type=ct.TensorType(shape=cache_shape, dtype=np.float16), name=VALUE_CACHE),
                ],
                # Core ML cannot compile on Linux; on macOS sessions load the saved package.
                skip_model_load=True,
            )

        quantizer = self.quantizer(request.scheme)
        quantizing = quantizer.apply is not no_quantization
        with stage(timings, "quantize_s", request.progress,
                   f"quantizing weights ({request.scheme})" if quantizing else None,
                   failing=f"coremltools weight quantization ({request.scheme})"):
            mlmodel = quantizer.apply(mlmodel, request.scheme)

        # Weights with no const of their own cannot be read back by name: those the
        # converter folded away (a norm weight of all ones, a bias of all zeros) and those
        # its const deduplication merged into an equal tensor's const. Record both, after
        # checking that that is what they are.
        mil_program = mlmodel._mil_program
        sources, missing = map_weights(mil_program, request.decoder)
        shared = shared_weights(request.decoder, sources, missing, torch.float16 if fp16 else torch.float32)
        identity = identity_weights(request.decoder, [k for k in missing if k not in shared])

        with stage(timings, "save_s", request.progress, "saving model.mlpackage"):
            mlmodel.short_description = f"mobilekit {request.scheme} decoder, stateful KV cache of {seq} tokens"
            mlmodel.user_defined_metadata[METADATA_SCHEME] = request.scheme
            mlmodel.user_defined_metadata[METADATA_MAX_SEQ_LEN] = str(seq)
            mlmodel.user_defined_metadata[METADATA_SLIDING_WINDOW] = json.dumps(sliding_window_layout(spec))
            mlmodel.user_defined_metadata[METADATA_IDENTITY_WEIGHTS] = json.dumps(identity)
            mlmodel.user_defined_metadata[METADATA_SHARED_WEIGHTS] = json.dumps(shared)
            path = request.out_dir / MODEL_FILE
            shutil.rmtree(path, ignore_errors=True)
            mlmodel.save(str(path))

        with stage(timings, "spec_check_s", request.progress, "checking the saved package"):
            expected = {"layers": spec.num_layers, "kv_heads": spec.num_kv_heads, "head_dim": spec.head_dim,
                        "max_seq_len": seq, "vocab_size": spec.vocab_size,
                        "sliding_window": sliding_window_layout(spec)}
            try:
                spec_check = check_spec(request.out_dir, request.scheme, expected)
            except ValidationFailed as e:
                raise ExportError(f"the converted model breaks the contract: {e}") from e

        return Artefact(
            files=[MODEL_FILE],
            io=io_contract(spec, seq, request.scheme),
            extra={
                "timings": timings,
                "deployment_target": f"{DEPLOYMENT_TARGET} / macOS15",
                "specification_version": SPEC_VERSION_IOS18,
                "compute_precision": COMPUTE_PRECISION[request.scheme],
                "recommended_compute_units": COMPUTE_UNITS[request.scheme],
                "mil_op_types": spec_check.pop("mil_op_types"),
                "identity_weights": identity,
                "shared_weights": shared,
                "fp16_safe_norms": fp16,
                "size_bytes": _dir_size(path),
                "spec_check": spec_check,
            },
        )

    def open_session(self, bundle_dir: Path, manifest: dict):
        """macOS: the real MLModel with its state. Elsewhere: the package's MIL program run by
        mobilekit's evaluator (an EvaluatorSession); Core ML itself cannot run there."""
        from mobilekit.runtime import coreml as rt

        _coremltools()
        path = _model_path(bundle_dir)
        if sys.platform == "darwin":
            return rt.CoreMLSession(path, int(manifest["max_seq_len"]), rt.compute_units_from_manifest(manifest))
        return rt.EvaluatorSession(path, int(manifest["max_seq_len"]))

    def generate(self, bundle_dir: Path, manifest: dict, prompt: str, max_new_tokens: int,
                 on_text: Callable[[str], None]) -> GenerationResult:
        """macOS: the real Core ML model. Elsewhere: mobilekit's evaluator of the package's
        program, which the result's runtime names (it is not Core ML)."""
        from mobilekit.runtime import coreml as rt

        _coremltools()
        path = _model_path(bundle_dir)
        session = None if sys.platform == "darwin" else rt.EvaluatorSession(path, int(manifest["max_seq_len"]))
        return rt.coreml_generate(Path(bundle_dir), manifest, prompt, max_new_tokens, on_text, session)


def _model_path(bundle_dir: Path) -> Path:
    path = Path(bundle_dir) / MODEL_FILE
    if not path.exists():
        raise BundleError(f"{path} does not exist; re-run the export")
    return path


TARGET = CoreMLTarget()
