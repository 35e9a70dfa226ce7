"""The Core ML bundle format: what the writer (mobilekit.targets.coreml) and the readers
(mobilekit.runtime.coreml, mobilekit.runtime.mil_evaluator) agree on.

A stateful `model.mlpackage` (iOS 18 / macOS 15) in the shape that swift-transformers'
`LanguageModelWithStatefulKVCache` loads; names exactly as its `LanguageModel.Keys` spells them:
  inputs   inputIds    int32 [1, T]                 T in 1..max_seq_len (RangeDim)
           causalMask  fp16  [1, 1, T, past+T]      additive: 0 = attend, -65504 = masked
  output   logits      [1, T, vocab]                fp16 (fp32 for the fp32 scheme)
  states   keyCache, valueCache  fp16 [attention layers, 1, kv_heads, max_seq_len, head_dim]
           convState             fp16 [conv layers, 1, channels, kernel-1] (only with conv or delta layers)
           recurrentState        fp16 [delta layers, 1, value heads, key dim, value dim] (only with delta layers)
           (convState and recurrentState are mobilekit's own; swift-transformers makes and passes every state)
One row of the KV cache per attention layer, one row of convState per conv layer (LFM2's, and
Qwen3.5's delta layers, whose q/k/v pass a short conv) and one row of recurrentState per delta
layer, in layer order (`state_rows`); the manifest's io.layer_states says, per layer, which
states and row.
Also here: mobilekit's metadata keys, the compute units per scheme, reading a saved package
back (`load_program`) and checking it against this contract (`check_spec`). No torch here:
coremltools is imported where a package is read.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from mobilekit.errors import BundleError, ValidationFailed
from mobilekit.formats import layer_states

MODEL_FILE = "model.mlpackage"
INPUT_IDS, CAUSAL_MASK, LOGITS = "inputIds", "causalMask", "logits"
KEY_CACHE, VALUE_CACHE = "keyCache", "valueCache"
# The conv layers' states (their last kernel-1 inputs): mobilekit's name, not one
# swift-transformers knows. It needs none: MLModel.makeState() makes every declared state,
# and the model alone reads and writes it.
CONV_STATE = "convState"
# The delta layers' recurrent matrices (Gated DeltaNet): mobilekit's own name too.
RECURRENT_STATE = "recurrentState"
DEPLOYMENT_TARGET = "iOS18"  # = macOS15; stateful models need it
SPEC_VERSION_IOS18 = 9  # Model.specificationVersion that coremltools writes for iOS18
WRAPPED_DECODER = "decoder"  # attribute name: torch.export lifts weights as p_decoder_<key>
METADATA_IDENTITY_WEIGHTS = "mobilekit.identity_weights"
METADATA_SHARED_WEIGHTS = "mobilekit.shared_weights"
# {parameter: const op name}: parameters stored only as a transform of themselves, which the
# converter folded into that const (mobilekit.lowering.coreml.FOLDED_FORMS says which transform)
METADATA_FOLDED_WEIGHTS = "mobilekit.folded_weights"
METADATA_SCHEME = "mobilekit.scheme"
METADATA_MAX_SEQ_LEN = "mobilekit.max_seq_len"
# {"window", "layers"} or null: the sliding-window layers masked inside the model
METADATA_SLIDING_WINDOW = "mobilekit.sliding_window"
COMPUTE_PRECISION = {"fp16": "float16", "fp32": "float32", "int8": "float16", "int4": "float16", "auto": "float16"}
# The ANE computes in fp16 only, so the fp16-compute schemes target it. The fp32 scheme exists
# to be the near-exact artefact: "cpuOnly" is the one unit whose fp32 path is fp32 on every
# device (the ANE would drop to fp16; GPU numerics differ between GPU families).
COMPUTE_UNITS = {"fp16": "cpuAndNeuralEngine", "int8": "cpuAndNeuralEngine", "int4": "cpuAndNeuralEngine",
                 "auto": "cpuAndNeuralEngine", "fp32": "cpuOnly"}
# Weight storage the schemes promise (auto: a plan's mix); check_spec verifies it in the saved program.
# int4 is uint4 data with an fp16 scale and an fp16 offset per block of 32 (a float zero point:
# output = scale * (data - offset), the grid min + scale*q of GGUF's Q4_1); int8 is symmetric.
QUANTIZED_DTYPES = {"int8": ("int8",), "int4": ("uint4",), "auto": ("uint4", "int8")}
INT4_BLOCK_SIZE = 32
# The ops that read a const as a weight: linear / matmul / conv weights and gather tables. Only
# such consts are quantized. Any other const is not a weight and stays fp16: the rotary cos/sin
# tables, read by slice_by_index, moved every position's rotation at 4 bits (issue 21).
WEIGHT_READERS = frozenset({"linear", "matmul", "conv", "gather"})
# coremltools' default: tensors of at most this many elements (norm weights, tiny projections)
# stay fp16 in the quantized schemes.
QUANTIZE_WEIGHT_THRESHOLD = 2048
# An additive mask's "masked" value: fp16's lowest (-65504), what swift-transformers writes.
MASKED_VALUE = float(np.finfo(np.float16).min)
MASKED = MASKED_VALUE  # the name the runtime and its tests use


# --- reading a saved package ---------------------------------------------------------------


def load_program(path: Path):
    """(MIL program, Model spec) of a saved .mlpackage; works without the Core ML runtime."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    try:
        model = ct.models.MLModel(str(path), skip_model_load=True)
        spec = model.get_spec()
        program = milproto_load(
            spec, specification_version=spec.specificationVersion, file_weights_dir=model.weights_dir
        )
    except Exception as e:
        raise BundleError(f"{path} is not a readable Core ML package ({type(e).__name__}: {e})") from e
    return program, spec


def read_identity_metadata(spec_pb) -> list[str]:
    raw = spec_pb.description.metadata.userDefined.get(METADATA_IDENTITY_WEIGHTS)
    return json.loads(raw) if raw else []


def read_shared_metadata(spec_pb) -> dict[str, str]:
    raw = spec_pb.description.metadata.userDefined.get(METADATA_SHARED_WEIGHTS)
    return json.loads(raw) if raw else {}


def read_folded_metadata(spec_pb) -> dict[str, str]:
    raw = spec_pb.description.metadata.userDefined.get(METADATA_FOLDED_WEIGHTS)
    return json.loads(raw) if raw else {}


def causal_mask(seq_len: int, end: int) -> np.ndarray:
    """fp16 [1,1,T,end] additive mask for T new tokens at positions end-T..end-1."""
    start = end - seq_len
    mask = np.full((seq_len, end), MASKED, dtype=np.float16)
    for i in range(seq_len):
        mask[i, : start + i + 1] = 0
    return mask[None, None]


def compute_units_from_manifest(manifest: dict) -> str:
    """The compute units the export recommended (manifest["export"]), else by scheme."""
    units = (manifest.get("export") or {}).get("recommended_compute_units")
    return units or COMPUTE_UNITS.get(manifest.get("quant"), "cpuAndNeuralEngine")


# --- the I/O contract the manifest records, and the check of a saved package -------------------


def sliding_window_layout(spec) -> dict | None:
    """{"window", "layers"} of a spec with sliding-window layers (Gemma 2/3), else None; the
    package records it in its metadata and the manifest in io.kv_cache.sliding_window."""
    layers = [i for i in range(spec.num_layers) if spec.layer_window(i)]
    return {"window": spec.sliding_window, "layers": layers} if layers else None


def kv_cache_shape(spec, max_seq_len: int) -> list[int]:
    """keyCache / valueCache: one row per attention layer (a conv layer has no KV cache), each
    sized for the largest layer's kv heads."""
    return [len(spec.attention_layers), 1, spec.num_kv_heads, max_seq_len, spec.head_dim]


def conv_state_shape(spec) -> list[int] | None:
    """convState: one row per layer with a conv state (spec.conv_layers: conv and delta
    layers), each a conv state [1, channels, kernel-1] as formats.layer_states describes it;
    None without such layers (no state declared)."""
    if not spec.conv_layers:
        return None
    return [len(spec.conv_layers), 1, spec.conv_channels, spec.conv_kernel - 1]


def recurrent_state_shape(spec) -> list[int] | None:
    """recurrentState: one row per delta layer, each its matrix state [1, value heads, key
    dim, value dim] (spec.recurrent_state_shape); None without delta layers."""
    if not spec.delta_layers:
        return None
    return [len(spec.delta_layers), *spec.recurrent_state_shape]


def state_rows(spec) -> dict[int, int]:
    """layer -> its row in the states of its kind, each in layer order: the attention layers'
    rows of keyCache/valueCache, the conv and delta layers' rows of convState. A delta layer's
    row of recurrentState is that same row: a decoder has conv layers or delta layers, never
    both (DecoderSpec refuses it), so spec.conv_layers are then exactly spec.delta_layers."""
    return {layer: row for layers in (spec.attention_layers, spec.conv_layers) for row, layer in enumerate(layers)}


def located_layer_states(spec) -> list[dict]:
    """formats.layer_states with, per layer, where its state lives: "state" (the Core ML
    state's name; {"key", "value"} for a KV cache, {"conv", "recurrent"} for a delta layer)
    and "index" (the row along the first axis of each of those states)."""
    rows = state_rows(spec)
    where = {"kv": {"key": KEY_CACHE, "value": VALUE_CACHE}, "conv": CONV_STATE,
             "delta": {"conv": CONV_STATE, "recurrent": RECURRENT_STATE}}
    return [{**entry, "state": where[entry["kind"]], "index": rows[entry["layer"]]} for entry in layer_states(spec)]


def io_contract(spec, max_seq_len: int, scheme: str) -> dict:
    """What apps rely on: names, dtypes and shapes (symbolic dims as strings)."""
    cache_shape = kv_cache_shape(spec, max_seq_len)
    logits_dtype = "float32" if scheme == "fp32" else "float16"
    kv_cache = {
        "kind": "Core ML states (slice_update at [past, past+T))",
        "layers": len(spec.attention_layers),
        "kv_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "max_seq_len": max_seq_len,
        "shape": cache_shape,
        "dtype": "float16",
    }
    if spec.conv_layers:
        kv_cache["attention_layers"] = list(spec.attention_layers)
        kv_cache["rows"] = ("row r holds attention layer attention_layers[r]; "
                            f"{'delta' if spec.delta_layers else 'conv'} layers have no KV cache")
    if not spec.uniform_kv_heads:
        kv_cache["kv_heads_per_layer"] = [spec.layer_kv_heads(i) for i in spec.attention_layers]
        kv_cache["per_layer_kv_heads"] = ("one state sized for the largest layer (kv_heads); the layer in row r reads "
                                          "and writes its first kv_heads_per_layer[r] heads, the rest stay zero")
    window = sliding_window_layout(spec)
    if window:
        kv_cache["sliding_window"] = {
            **window,
            "cache": "full length: sliding layers keep all max_seq_len positions like the others (exact at any "
                     "context up to max_seq_len, but the cache is not smaller)",
            "mask": "applied inside the model from the positions (keys <= query - window are masked in the "
                    "sliding layers); the app passes the plain causal mask",
        }
    state_tensors = [
        {"name": KEY_CACHE, "dtype": "float16", "shape": cache_shape},
        {"name": VALUE_CACHE, "dtype": "float16", "shape": cache_shape},
    ]
    reset = "read as zeros when a call starts at position 0 (inside the model), so a reused MLState needs no " \
            "clearing between sequences"
    for name, shape in ((CONV_STATE, conv_state_shape(spec)), (RECURRENT_STATE, recurrent_state_shape(spec))):
        if shape:
            state_tensors.append({"name": name, "dtype": "float16", "shape": shape, "reset": reset})
    return {
        "inputs": [
            {"name": INPUT_IDS, "dtype": "int32", "shape": [1, "T"]},
            {"name": CAUSAL_MASK, "dtype": "float16", "shape": [1, 1, "T", "past+T"],
             "semantics": "additive (0 = attend, -65504 = masked), plain causal for every layer; positions are "
                          "past..past+T-1, read from the shape"},
        ],
        "outputs": [{"name": LOGITS, "dtype": logits_dtype, "shape": [1, "T", spec.vocab_size]}],
        # The Core ML states the model declares (MLModel.makeState() makes them all) ...
        "states": state_tensors,
        # ... and, per layer, the state it carries and where in those it lives.
        "layer_states": located_layer_states(spec),
        "dims": {"T": {"min": 1, "max": max_seq_len}, "past+T": {"min": 1, "max": max_seq_len}},
        "kv_cache": kv_cache,
        "loader": "swift-transformers LanguageModelWithStatefulKVCache",
    }


# The states beside the KV cache: (name, its key in check_spec's `expected`, layout, rank).
_OPTIONAL_STATES = (
    (CONV_STATE, "conv_state", "[conv layers, 1, channels, kernel-1]", 4),
    (RECURRENT_STATE, "recurrent_state", "[delta layers, 1, value heads, key dim, value dim]", 5),
)


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
    mismatch. `expected` (layers: the KV cache's rows, kv_heads, head_dim, max_seq_len,
    vocab_size, and optionally sliding_window as `sliding_window_layout` gives it, conv_state
    as `conv_state_shape` gives it and recurrent_state as `recurrent_state_shape` gives it)
    tightens the checks; without it the shapes are checked for consistency among themselves."""
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
    # convState is there exactly when the decoder has conv or delta layers, recurrentState
    # exactly when it has delta layers (so never without convState); without `expected`, any.
    kv_states = [KEY_CACHE, VALUE_CACHE]
    allowed = [kv_states, kv_states + [CONV_STATE], kv_states + [CONV_STATE, RECURRENT_STATE]]
    for name, key, _, _ in _OPTIONAL_STATES:
        if expected and key in expected:
            allowed = [names for names in allowed if (name in names) == bool(expected[key])]
    if sorted(states) not in [sorted(names) for names in allowed]:
        problems.append(f"states are {list(states)}, expected {' or '.join(map(str, allowed))}")

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
    for name, key, layout, rank in _OPTIONAL_STATES:
        if name not in states:
            continue
        arr = states[name].type.stateType.arrayType
        shape, dtype = list(arr.shape), _array_dtype(arr)
        found["states"].append({"name": name, "dtype": dtype, "shape": shape})
        if dtype != "float16":
            problems.append(f"state {name} is {dtype}, expected float16")
        if len(shape) != rank or shape[1] != 1:
            problems.append(f"state {name} has shape {shape}, expected {layout}")
        elif expected and expected.get(key) and shape != expected[key]:
            problems.append(f"state {name} shape {shape} differs from the decoder's {expected[key]}")

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
    if scheme in QUANTIZED_DTYPES:
        want = QUANTIZED_DTYPES[scheme]
        if not any(weights["quantized"].get(dtype, 0) for dtype in want):
            problems.append(f"scheme {scheme} but no constexpr_blockwise_shift_scale op stores {' or '.join(want)} "
                            "weights")
        for name, count in weights["linear_weights_unquantized_large"].items():
            problems.append(f"linear weight {name} ({count} elements) is not quantized")
        if "uint4" in want and weights["int4_block_sizes"] - {INT4_BLOCK_SIZE}:
            problems.append(f"int4 block sizes {sorted(weights['int4_block_sizes'])}, expected {INT4_BLOCK_SIZE}")
        for name, readers in weights["quantized_non_weights"].items():
            problems.append(f"const {name} is quantized but is not a weight (read by {', '.join(readers)})")
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
    """How the program stores its weights: quantized counts by dtype, float consts, linear
    weights above the threshold that were left unquantized, and quantized consts that some op
    other than a WEIGHT_READER reads."""
    from coremltools.converters.mil.mil import types

    quantized: dict[str, int] = {}
    floats: dict[str, int] = {}
    constexpr: dict[str, int] = {}
    block_sizes: set[int] = set()
    unquantized, non_weights = {}, {}
    for op in program.functions["main"].operations:
        if op.op_type.startswith("constexpr_"):
            constexpr[op.op_type] = constexpr.get(op.op_type, 0) + 1
            data = op.inputs.get("data")
            if data is not None:
                name = types.builtin_to_string(data.dtype)
                quantized[name] = quantized.get(name, 0) + 1
                scale = op.inputs.get("scale")
                if name in ("int4", "uint4") and scale is not None and data.rank == 2 and scale.shape[1]:
                    block_sizes.add(data.shape[1] // scale.shape[1])
            readers = sorted({c.op_type for c in op.outputs[0].child_ops} - WEIGHT_READERS)
            if readers:
                non_weights[op.name] = readers
        elif op.op_type == "const" and op.outputs[0].rank >= 1 and types.is_float(op.outputs[0].dtype):
            name = types.builtin_to_string(op.outputs[0].dtype)
            if any(not c.op_type.startswith("constexpr_") for c in op.outputs[0].child_ops):
                floats[name] = floats.get(name, 0) + 1
        if op.op_type == "linear":
            w = op.weight
            if w.op is not None and w.op.op_type == "const" and math.prod(w.shape) > QUANTIZE_WEIGHT_THRESHOLD:
                unquantized[w.op.name] = math.prod(w.shape)
    return {"quantized": quantized, "float": floats, "constexpr_ops": constexpr,
            "int4_block_sizes": block_sizes, "linear_weights_unquantized_large": unquantized,
            "quantized_non_weights": non_weights}


def mil_op_types(program) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in program.functions["main"].operations:
        counts[op.op_type] = counts.get(op.op_type, 0) + 1
    return dict(sorted(counts.items()))

