"""Core ML target: a stateful `model.mlpackage` (iOS 18 / macOS 15) in the shape that
swift-transformers' `LanguageModelWithStatefulKVCache` loads.

Contract (names exactly as swift-transformers' `LanguageModel.Keys` spells them):
  inputs   inputIds    int32 [1, T]                 T in 1..max_seq_len (RangeDim)
           causalMask  fp16  [1, 1, T, past+T]      additive: 0 = attend, -65504 = masked
  output   logits      [1, T, vocab]                fp16 (fp32 for the fp32 scheme)
  states   keyCache, valueCache  fp16 [attention layers, 1, kv_heads, max_seq_len, head_dim]
           convState             fp16 [conv layers, 1, channels, kernel-1] (only with conv or delta layers)
           recurrentState        fp16 [delta layers, 1, value heads, key dim, value dim] (only with delta layers)
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

The contract's names, metadata keys and checks live in mobilekit.formats.coreml (shared with
the runtime); the converted module and its trace-time rewrites in mobilekit.lowering.coreml.
This module imports no torch at import time, so `mobilekit list` and `info` can read its
schemes (the quantizers registered below) without loading it: torch, coremltools and the
torch-side lowering and runtime modules are imported inside the methods that use them.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from mobilekit.errors import BundleError, ExportError, ValidationFailed
from mobilekit.formats.coreml import (CAUSAL_MASK, COMPUTE_PRECISION, COMPUTE_UNITS, DEPLOYMENT_TARGET,
                                      INPUT_IDS, INT4_BLOCK_SIZE, LOGITS, METADATA_FOLDED_WEIGHTS,
                                      METADATA_IDENTITY_WEIGHTS,
                                      METADATA_MAX_SEQ_LEN, METADATA_SCHEME, METADATA_SHARED_WEIGHTS,
                                      METADATA_SLIDING_WINDOW, MODEL_FILE,
                                      QUANTIZE_WEIGHT_THRESHOLD, QUANTIZED_DTYPES, SPEC_VERSION_IOS18, WEIGHT_READERS,
                                      check_spec,
                                      conv_state_shape, io_contract, recurrent_state_shape, sliding_window_layout)
from mobilekit.lowering import stage, tanh_gelu_spelled_out
from mobilekit.quantize import WeightFormat, no_quantization, quantizer
from mobilekit.targets import Artefact, ExportRequest, GenerationResult, Target


# --- quantization -----------------------------------------------------------------------


# An int4 block's offset is -min/scale in fp16: bounded so that it stays exact to 1/32 of a
# step (fp16 spacing below 64). Only a block whose values sit far from 0 relative to their
# spread reaches it; its scale grows to |min|/64, a coarser grid that still spans the block.
INT4_MAX_OFFSET = 64.0


def int4_float_offset(w: np.ndarray, block: int = INT4_BLOCK_SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(data uint8 in 0..15, scale fp16, offset fp16) of `w` [rows, cols] in blocks of `block`
    along the columns, so that w ~ scale * (data - offset): per block, the grid from its min to
    its max in 15 steps, a float zero point. That is GGUF Q4_1's grid (min + scale * q) and
    torchao's tinygemm zero-point domain, here in Core ML's constexpr_blockwise_shift_scale
    form. Measured on SmolLM2-135M (issue 21): it keeps a Q4_1 checkpoint's weights to fp16
    rounding, where a symmetric grid or an integer zero point cannot. Data and offset are
    computed from the fp16-rounded scale so that the stored three agree."""
    rows, cols = w.shape
    blocks = w.astype(np.float32).reshape(rows, cols // block, block)
    low, high = blocks.min(-1), blocks.max(-1)
    scale = np.maximum((high - low) / 15.0, np.abs(low) / INT4_MAX_OFFSET)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float16)  # an all-zero block: any scale, offset 0
    offset = (-low / scale.astype(np.float32)).astype(np.float16)
    data = np.rint(blocks / scale.astype(np.float32)[..., None] + offset.astype(np.float32)[..., None])
    return np.clip(data, 0, 15).astype(np.uint8).reshape(rows, cols), scale, offset


def quantization_config(scheme: str, program, plan: dict[str, int] | None = None):
    """coremltools OptimizationConfig for `scheme` (int8 / int4 / auto), or None for fp16 / fp32.

    Only weights are quantized: consts read by a WEIGHT_READER (linear, matmul, conv, gather)
    above the size threshold; every other const of `program` (rotary tables) is set to None.
    int8: linear_symmetric int8 per output channel.
    int4: uint4 in blocks of 32 along the input axis with fp16 scales and offsets
    (int4_float_offset, applied by FloatOffsetQuantizer; the config's mode "linear" only
    selects that path). Embedding tables too: a tied one is the lm head's const. A conv
    layer's taps [hidden, kernel] (above the threshold from hidden 683 on, kernel 3): int8
    quantizes them per row like any weight; int4's blocks of 32 cannot split a kernel axis of
    3, so coremltools leaves them fp16 (measured with hidden 1024).
    auto: `plan` (const op name -> 4 or 8) sets each planned weight's config, int4's above
    for the rest; a tied embedding is the lm head's const, so it follows the head's bits."""
    if scheme not in QUANTIZED_DTYPES:
        return None
    import coremltools.optimize.coreml as cto  # the target checked it is installed

    int8 = cto.OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=QUANTIZE_WEIGHT_THRESHOLD
    )
    int4 = cto.OpLinearQuantizerConfig(
        mode="linear", dtype="uint4", granularity="per_block", block_size=INT4_BLOCK_SIZE,
        weight_threshold=QUANTIZE_WEIGHT_THRESHOLD,
    )
    not_weights = {
        op.name: None
        for op in program.functions["main"].operations
        if op.op_type == "const" and op.outputs[0].rank >= 1
        and {c.op_type for c in op.outputs[0].child_ops} - WEIGHT_READERS
    }
    planned = {name: int8 if bits == 8 else int4 for name, bits in (plan or {}).items()}
    return cto.OptimizationConfig(global_config=int8 if scheme == "int8" else int4,
                                  op_name_configs={**planned, **not_weights})


def _float_offset_quantizer_class():
    """coremltools' linear_quantize_weights pass with the uint4 blocks computed by
    int4_float_offset: coremltools finds the weights, applies the per-op configs and writes
    the constexpr_blockwise_shift_scale ops; only the numbers of a uint4 block differ (its
    own LINEAR mode rounds the zero point to an integer). int8 goes through unchanged."""
    from coremltools.converters.mil.mil import types
    from coremltools.optimize import _utils as optimize_utils
    from coremltools.optimize.coreml._quantization_passes import linear_quantize_weights

    class FloatOffsetQuantizer(linear_quantize_weights):
        @classmethod
        def blockwise_compress_by_dtype(cls, original_data, dtype, mode, block_sizes):
            if isinstance(dtype, str):
                dtype = types.string_to_builtin(dtype)
            if dtype != types.uint4:
                return super().blockwise_compress_by_dtype(original_data, dtype, mode, block_sizes)
            blocks = list(block_sizes)
            if original_data.ndim != 2 or sorted(blocks) != [1, INT4_BLOCK_SIZE]:
                raise ExportError(f"int4: a weight of shape {list(original_data.shape)} in blocks {blocks}; "
                                  f"mobilekit writes 2-D weights in blocks of {INT4_BLOCK_SIZE} along one axis only")
            if blocks[0] == INT4_BLOCK_SIZE:  # a [in, out] const (matmul): blocks run down the columns
                data, scale, offset = (a.T for a in int4_float_offset(original_data.T))
            else:
                data, scale, offset = int4_float_offset(original_data)
            return optimize_utils.QuantParams(data=data.astype(types.nptype_from_builtin(types.uint4)),
                                              scale=scale, offset=offset, nbits=np.uint8(4))

    return FloatOffsetQuantizer


@quantizer("coreml", "int8", "int4", "auto")
def quantize_weights(mlmodel, scheme: str, plan: dict[str, int] | None = None):
    """The model with its weights quantized per `scheme` (coremltools.optimize's pass, int4
    blocks by int4_float_offset); auto: `plan` maps the program's weight consts to bits
    (CoreMLTarget.export builds it)."""
    from coremltools.models.utils import _apply_graph_pass

    config = quantization_config(scheme, mlmodel._mil_program, plan)
    # An all-zero row (a padding token's embedding row) gets int8 scale 0, and coremltools
    # computes 0/0 for its data: numpy warns, the stored scale is 0 and the row dequantizes to
    # exactly 0, as it should.
    with np.errstate(divide="ignore", invalid="ignore"):
        return _apply_graph_pass(mlmodel, _float_offset_quantizer_class()(config=config))


def coreml_weight_format():
    """quantize.WeightFormat of quantize_weights, for --quant auto: the same arithmetic on
    the fp16 weight, int4 by int4_float_offset or int8 by coremltools' linear_symmetric
    (compute_qparams) per output channel. Weight-only: activations stay fp16, not simulated.
    Linears only, as on ONNX: a tied embedding is the head's const; an untied one takes
    the scheme's 4 bits, outside plans."""

    def weight(module, kind: str, bits: int):
        import torch
        from coremltools.optimize._utils import compute_qparams

        w = module.weight.detach().to(torch.float16).numpy()
        rows, cols = w.shape
        if w.size <= QUANTIZE_WEIGHT_THRESHOLD or (bits == 4 and cols % INT4_BLOCK_SIZE):
            return torch.from_numpy(w.astype(np.float32))  # coremltools leaves such a weight fp16
        if bits == 4:
            data, scale, offset = int4_float_offset(w)
            deq = (data.reshape(rows, -1, INT4_BLOCK_SIZE) - offset.astype(np.float32)[..., None]) \
                * scale.astype(np.float32)[..., None]
            return torch.from_numpy(deq.reshape(rows, cols).astype(np.float32))
        with np.errstate(divide="ignore", invalid="ignore"):  # an all-zero row: scale 0, as above
            q, scale, _ = compute_qparams(w, 8, True, "LINEAR_SYMMETRIC", None, [1, 0])
        return torch.from_numpy(np.nan_to_num(q.astype(np.float32)) * scale.astype(np.float32))

    return WeightFormat(weight, {("linear", 4): 0.5 + 4 / INT4_BLOCK_SIZE, ("linear", 8): 1.0}, kinds=("linear",),
                        embedding_follows_head=True)


quantizer("coreml", "fp16", "fp32")(no_quantization)  # fp16 / fp32: the compute precision of the conversion


def _drop_temporary_package(mlmodel) -> None:
    """coremltools keeps each model it converts in a temporary package that it deletes only
    at interpreter exit: a nightly matrix converting every recipe in one process would hold
    them all in /tmp (a 12B model's are gigabytes). Delete it once it is no longer read."""
    if mlmodel.is_temp_package:
        shutil.rmtree(mlmodel.package_path, ignore_errors=True)


def _const_plan(mlmodel, request: ExportRequest) -> dict[str, int]:
    """--quant auto's plan (decoder module -> bits) as the converted program's weight consts
    (const op name -> bits), found by map_weights; every planned weight must have one."""
    from mobilekit.lowering.coreml import map_weights  # torch-level, as in export

    sources, _ = map_weights(mlmodel._mil_program, request.decoder)
    plan, missing = {}, []
    for module, bits in request.plan.items():
        op = sources.get(f"{module}.weight")
        if op is None or op.op_type != "const":
            missing.append(module)
        else:
            plan[op.name] = max(bits, plan.get(op.name, 0))  # a shared const takes the larger
    if missing:
        raise ExportError(f"--quant auto: no weight const of its own in the converted program for {', '.join(missing)}")
    return plan


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# --- the target -------------------------------------------------------------------------


class CoreMLTarget(Target):
    name = "coreml"
    default_scheme = "fp16"
    runtime = "Core ML (swift-transformers LanguageModelWithStatefulKVCache)"
    packages = ("coremltools", "torch")
    required_modules = ("coremltools",)
    install = "pip install 'mobilekit[coreml]'"
    # Core ML states are fp16 only, so the fp32 artefact caches keys and values in fp16 and its
    # logits are not fp32-exact: through the evaluator, SmolLM2-135M fp32 is off by max |Δ|
    # 0.016 (cos >= 0.999999, top-1 and greedy 100%), and by 5.7e-5 with the states widened
    # to fp32 (the graph itself is exact). The max |Δ| bound moves to 0.05; a logit error that
    # large flips the top-1 of near-ties, so top-1 and greedy get fp16's gates (the tiny
    # Gemma 3 1B of `mobilekit matrix` flipped 1 of 80 positions at max |Δ| 0.0017 and its
    # greedy continuation after that). Perplexity keeps fp32's bound; the worst position's
    # cosine moves to 0.9999: the tiny Gemma 3n (AltUp, unscaled attention over unit-RMS q, k
    # and v) measured 0.999979 (mean 0.9999989, max |Δ| 0.016), and 2.8e-5 from the eager
    # decoder with the states in fp32.
    budget_adjustments = {"fp32": {"max_abs_logit_error": 0.05, "min_cosine": 0.9999, "min_top1_agreement": 0.9,
                                   "min_greedy_match": None}}
    # Measured: int4 conversion of a 1.1B model (4.4 GB fp32) peaked at 11.65 GB RSS.
    export_memory_factor = 2.65

    def export(self, request: ExportRequest) -> Artefact:
        self.check_available()
        import coremltools as ct
        import torch
        from torch.export import Dim

        from mobilekit.lowering.coreml import (CoreMLDecoder, eye_spelled_out, folded_weights, fp16_safe_norms,
                                               identity_weights, map_weights, shared_weights)

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
                tanh_gelu_spelled_out(request.decoder), eye_spelled_out():
            program = torch.export.export(
                module, example, dynamic_shapes=({1: t_dim}, {2: t_dim, 3: end_dim}), strict=False
            )

        with stage(timings, "decompose_s", request.progress, "decompositions"):
            program = program.run_decompositions({})

        # Every state buffer of the module (the KV cache; the conv state with conv or delta
        # layers, the recurrent state with delta layers)
        # becomes a Core ML state of its shape: coremltools matches them by name.
        states = [ct.StateType(wrapped_type=ct.TensorType(shape=tuple(getattr(module, name).shape), dtype=np.float16),
                               name=name)
                  for name in module.state_names]
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
                states=states,
                # Core ML cannot compile on Linux; on macOS sessions load the saved package.
                skip_model_load=True,
            )

        quantizer = self.quantizer(request.scheme)
        with stage(timings, "quantize_s", request.progress,
                   f"quantizing weights ({request.scheme})" if quantizer.changes_weights else None,
                   failing=f"coremltools weight quantization ({request.scheme})"):
            converted = mlmodel
            if request.plan is None:
                mlmodel = quantizer(mlmodel)
            else:
                mlmodel = quantizer(mlmodel, plan=_const_plan(mlmodel, request))
            if mlmodel is not converted:
                _drop_temporary_package(converted)

        # Weights with no const of their own cannot be read back by name: those the
        # converter folded away (a norm weight of all ones, a bias of all zeros), those its
        # const deduplication merged into an equal tensor's const, and those it folded into a
        # const of their transform (a delta layer's A_log, as -exp(A_log)). Record all three,
        # after checking that that is what they are.
        mil_program = mlmodel._mil_program
        stored = torch.float16 if fp16 else torch.float32
        sources, missing = map_weights(mil_program, request.decoder)
        folded = folded_weights(mil_program, request.decoder, missing, stored)
        shared = shared_weights(request.decoder, sources, [k for k in missing if k not in folded], stored)
        identity = identity_weights(request.decoder, [k for k in missing if k not in shared and k not in folded])

        with stage(timings, "save_s", request.progress, "saving model.mlpackage"):
            mlmodel.short_description = f"mobilekit {request.scheme} decoder, stateful KV cache of {seq} tokens"
            mlmodel.user_defined_metadata[METADATA_SCHEME] = request.scheme
            mlmodel.user_defined_metadata[METADATA_MAX_SEQ_LEN] = str(seq)
            mlmodel.user_defined_metadata[METADATA_SLIDING_WINDOW] = json.dumps(sliding_window_layout(spec))
            mlmodel.user_defined_metadata[METADATA_IDENTITY_WEIGHTS] = json.dumps(identity)
            mlmodel.user_defined_metadata[METADATA_SHARED_WEIGHTS] = json.dumps(shared)
            mlmodel.user_defined_metadata[METADATA_FOLDED_WEIGHTS] = json.dumps(folded)
            path = request.out_dir / MODEL_FILE
            shutil.rmtree(path, ignore_errors=True)
            mlmodel.save(str(path))
            _drop_temporary_package(mlmodel)

        with stage(timings, "spec_check_s", request.progress, "checking the saved package"):
            expected = {"layers": len(spec.attention_layers), "kv_heads": spec.num_kv_heads, "head_dim": spec.head_dim,
                        "max_seq_len": seq, "vocab_size": spec.vocab_size,
                        "sliding_window": sliding_window_layout(spec), "conv_state": conv_state_shape(spec),
                        "recurrent_state": recurrent_state_shape(spec)}
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
                "folded_weights": folded,
                "fp16_safe_norms": fp16,
                "size_bytes": _dir_size(path),
                "spec_check": spec_check,
            },
        )

    def weight_format(self):
        return coreml_weight_format()

    def open_session(self, bundle_dir: Path, manifest: dict):
        """macOS: the real MLModel with its state. Elsewhere: the package's MIL program run by
        mobilekit's evaluator (an EvaluatorSession); Core ML itself cannot run there."""
        from mobilekit.runtime import coreml as rt

        self.check_available()
        path = _model_path(bundle_dir)
        if sys.platform == "darwin":
            return rt.CoreMLSession(path, int(manifest["max_seq_len"]), rt.compute_units_from_manifest(manifest))
        return rt.EvaluatorSession(path, int(manifest["max_seq_len"]))

    def generate(self, bundle_dir: Path, manifest: dict, prompt: str, max_new_tokens: int,
                 on_text: Callable[[str], None]) -> GenerationResult:
        """macOS: the real Core ML model. Elsewhere: mobilekit's evaluator of the package's
        program, which the result's runtime names (it is not Core ML)."""
        from mobilekit.runtime import coreml as rt

        self.check_available()
        path = _model_path(bundle_dir)
        session = None if sys.platform == "darwin" else rt.EvaluatorSession(path, int(manifest["max_seq_len"]))
        return rt.coreml_generate(Path(bundle_dir), manifest, prompt, max_new_tokens, on_text, session)


def _model_path(bundle_dir: Path) -> Path:
    path = Path(bundle_dir) / MODEL_FILE
    if not path.exists():
        raise BundleError(f"{path} does not exist; re-run the export")
    return path


TARGET = CoreMLTarget()
