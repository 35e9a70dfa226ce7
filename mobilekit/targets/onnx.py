"""ONNX target: `model.onnx` + `model.onnx.data` + `genai_config.json`, for ONNX Runtime
GenAI (`onnxruntime_genai.Model/Generator`, the app runtime) and plain ONNX Runtime.

Contract (the layout of Hugging Face / optimum decoder exports, which GenAI reads through
`genai_config.json` with `past_present_share_buffer: false`):

  inputs   input_ids [1,T] int64, attention_mask [1,P+T] int64, position_ids [1,T] int64,
           past_key_values.{i}.key|value [1,kv_heads,P,head_dim]   (attention layers i)
           past_key_values.{i}.conv_state [1,channels,kernel-1]    (conv and delta layers i)
           past_key_values.{i}.recurrent_state [1,value_heads,key_dim,value_dim] (delta layers i)
  outputs  logits [1,T,V] float32, present.{i}.key|value [1,kv_heads,P+T,head_dim],
           present.{i}.conv_state [1,channels,kernel-1],
           present.{i}.recurrent_state [1,value_heads,key_dim,value_dim]

The app feeds each present back as the next past (a KV present is concat(past, new), with
zero rows between when attention_mask is wider than P+T: GENAI_GAP in lowering.onnx; a conv
present the last kernel-1 inputs of the convolution; a recurrent present a Gated DeltaNet's
matrix state, float32 under every scheme; conv and recurrent states are zeros before the
first token). T and P are dynamic; P is 0 on the first call. A folder with LFM2's conv
layers declares GenAI's "lfm2" type, whose cache holds both kinds; one with delta layers the
decoder-only "llama", whose recurrent state holds a delta layer's two tensors
(formats.onnx.genai_type). The graph is exported with
`torch.onnx.export(dynamo=True)` from a wrapper around the one mobilekit decoder, at opset 23
(ONNX Runtime >= 1.23): each layer is RMSNormalization (LayerNormalization for LayerNorm
families), MatMuls, RotaryEmbedding (rotary_embedding_dim for partial rotary) and one
Attention node (GQA, past and present inside, softcap for Gemma 2); a conv layer (LFM2) is its MatMuls around the
decoder's CausalConv, a few elementwise ops on [past, x]; a delta layer (Qwen3.5) is its
MatMuls around that conv and the decoder's gated_delta_rule, one chunk of plain ops (MatMul,
CumSum, Exp, Where) over all T <= max_seq_len tokens at once (GenAI's own builder emits ONNX
Runtime's contrib ops CausalConvWithState and LinearAttention instead; GenAI needs neither to
run ours). Sliding-window layers keep a full-length past and read a second, windowed mask
(io kv_cache.sliding_window). int8/int4 are ONNX Runtime's own MatMulNBits weight quantizer
(MatMuls with a weight only: conv taps, the delta layers' A_log, dt_bias and norm, and the
recurrence's own MatMuls stay float).

The contract's names, genai_config.json and the manifest's io section live in
mobilekit.formats.onnx, shared with the runtime; the exported module (OnnxDecoder), its custom
ops and one-node forms in mobilekit.lowering.onnx. This module imports no torch at import
time, so `mobilekit list` and `info` can read its schemes (the quantizers registered below)
without loading it: torch and onnx are imported inside the functions that compute.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from mobilekit.formats.onnx import DATA_FILE, GENAI_CONFIG, INPUT_IDS, MODEL_FILE, genai_config, io_contract
from mobilekit.lowering import stage
from mobilekit.quantize import WeightFormat, no_quantization, quantizer, quantizer_for
from mobilekit.runtime.onnx import OnnxSession, genai_generate, genai_greedy
from mobilekit.targets import Artefact, ExportRequest, GenerationResult, Target

if TYPE_CHECKING:
    from mobilekit.modeling import Decoder

INT4_BLOCK_SIZE = 32
OPSET = 23  # Attention (GQA, past/present), RotaryEmbedding, RMSNormalization
# the converter and plain ONNX Runtime (export, validation); GenAI (apps' runtime) on top
CONVERTER_MODULES = ("onnx", "onnxscript", "onnxruntime")


def _light_optimize(model) -> None:
    """Constant folding (which also pre-transposes the linear weights) and dead-code
    removal, once. torch.onnx's default `optimize=True` also runs onnxscript's pattern
    rewriter twice: on SmolLM2-135M that is 16 of its 18 s, for clean-ups (reshape/cast
    chains) that ONNX Runtime's own graph optimizer does again at session load."""
    import onnx_ir.passes.common as common
    from onnxscript.optimizer import fold_constants

    fold_constants(model)
    for p in (
        common.RemoveUnusedNodesPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.RemoveUnusedNodesPass(),
    ):
        p(model)


def _readable_names(model) -> None:
    """Name each linear's MatMul after its module (decoder.layers.3.mlp.down_proj/MatMul)
    and its pre-transposed weight after the parameter (...down_proj.weight.T), so quantizer
    options and graph viewers can address them; then drop the exporter's per-node metadata
    (stack traces, FX nodes: most of model.onnx's bytes)."""
    import ast

    import onnx_ir.passes.common as common
    from onnxscript.optimizer import FOLDED_FROM_KEY

    taken = set(model.graph.initializers)
    for node in model.graph:
        if node.op_type != "MatMul" or len(node.inputs) < 2 or node.inputs[1] is None:
            continue
        scopes = ast.literal_eval(node.metadata_props.get("pkg.torch.onnx.name_scopes", "[]"))
        module = next((s for s in reversed(scopes) if s.startswith("decoder.")), None)
        if module is None:  # attention's own MatMuls
            continue
        node.name = module + "/MatMul"
        weight = node.inputs[1]
        sources = weight.meta.get(FOLDED_FROM_KEY)
        if weight.const_value is not None and sources and len(sources) == 1:
            (param,) = sources
            if param + ".T" not in taken and weight.name in model.graph.initializers:
                model.graph.initializers.pop(weight.name)
                weight.name = param + ".T"
                model.graph.register_initializer(weight)
                taken.add(weight.name)
    common.ClearMetadataAndDocStringPass()(model)
    for value in model.graph.initializers.values():
        value.meta.pop(FOLDED_FROM_KEY, None)
        value.metadata_props.pop(FOLDED_FROM_KEY, None)
    common.NameFixPass()(model)


def _symbolic_dims(shape: list) -> dict[int, str]:
    """{axis: name} of the symbolic dims of a contract shape."""
    return {axis: dim for axis, dim in enumerate(shape) if isinstance(dim, str)}


def _name_dims(model, contract: dict) -> None:
    """Name the outputs' symbolic dims as the contract does: the exporter leaves a KV
    present's length (P+T) an expression; it is total_sequence_length, as in the mask."""
    declared = {value["name"]: value["shape"] for value in contract["outputs"]}
    for value in model.graph.outputs:
        if value.name in declared and value.shape is not None:
            dims = list(value.shape)
            for axis, name in _symbolic_dims(declared[value.name]).items():
                dims[axis] = name
            value.shape = type(value.shape)(dims)


def export_onnx(decoder: Decoder, max_seq_len: int, path: Path, scheme: str = "fp32",
                progress: Callable[[str], None] = lambda _m: None,
                plan: dict[str, int] | None = None) -> tuple[dict[str, float], dict]:
    """Export `decoder` to `path` + `path.data` under `scheme`; return (timings, quantization facts).

    fp16 exports the decoder cast to fp16: weights, activations and KV cache are fp16 in the
    graph, logits are cast to fp32 (GenAI accepts either; apps read fp32). ONNX Runtime's
    CPU provider lacks fp16 kernels for most of these ops and runs them in fp32 behind
    inserted casts; fp16 pays off on GPU/NPU providers and in file size. int8/int4 quantize
    the exported fp32 graph in memory with quantize_model before the only save (writing the
    fp32 model and reading it back to quantize it cost ~4 s more on SmolLM2)."""
    import torch
    from torch.export import Dim

    from mobilekit.lowering.onnx import OnnxDecoder, example_inputs, onnx_modules, onnx_ops

    spec = decoder.spec
    timings = {}
    chosen = quantizer_for("onnx", scheme)
    ops = onnx_ops()
    if scheme == "fp16":
        decoder = copy.deepcopy(decoder).to(torch.float16)
    dtype = decoder.embed_tokens.weight.dtype
    # Input and output names and each input's symbolic dims, as the contract declares them (a
    # conv state has none: its shape is fixed); its dtype is not read here.
    contract = io_contract(spec, max_seq_len, "float32")
    symbolic = [_symbolic_dims(value["shape"]) for value in contract["inputs"]]
    # in OnnxDecoder's argument structure: input_ids, attention_mask, position_ids, [pasts]
    names = (*symbolic[:3], symbolic[3:])
    # Dim.DYNAMIC, not named Dims: from the example (T=2, P=3) export infers bounds such as
    # P >= 2 that named Dims would reject; the graph holds for P = 0 and T = 1 (tested).
    dynamic = (*({axis: Dim.DYNAMIC for axis in dims} for dims in symbolic[:3]),
               [{axis: Dim.DYNAMIC for axis in dims} for dims in symbolic[3:]])
    example = example_inputs(spec, dtype)

    with stage(timings, "torch_export_s", progress, "torch.export", failing="torch.export of the ONNX decoder"), \
            torch.no_grad(), onnx_modules(decoder):
        module = OnnxDecoder(decoder, max_seq_len).eval().requires_grad_(False)
        program = torch.export.export(module, example, dynamic_shapes=dynamic, strict=False)

    # Its op registry warns, on every export, that torchvision's ops are unavailable.
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    registry_level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with stage(timings, "onnx_translate_s", progress, "translating to ONNX (torch.onnx, dynamo)",
                   failing="torch.onnx.export of the ONNX decoder"):
            # Given an ExportedProgram, torch.onnx uses dynamic_shapes only to name the dims.
            onnx_program = torch.onnx.export(
                program, example, dynamo=True, dynamic_shapes=names, opset_version=OPSET,
                custom_translation_table=ops["translations"],
                input_names=[value["name"] for value in contract["inputs"]],
                output_names=[value["name"] for value in contract["outputs"]],
                optimize=False, verbose=False,
            )
    finally:
        registry_log.setLevel(registry_level)

    with stage(timings, "optimize_s", progress, "optimizing the ONNX graph"):
        _light_optimize(onnx_program.model)
        _readable_names(onnx_program.model)
        _name_dims(onnx_program.model, contract)

    path.parent.mkdir(parents=True, exist_ok=True)
    if chosen.changes_weights:
        with stage(timings, "quantize_s", progress, f"quantizing ({scheme})"):
            model, facts = chosen(onnx_program.model_proto, plan=plan)
        with stage(timings, "save_s", progress, "saving model.onnx"):
            _save(model, path)
    else:  # saved straight from torch.onnx's in-memory IR, without a ModelProto copy
        facts = {"scheme": scheme}
        with stage(timings, "save_s", progress, "saving model.onnx"):
            _remove(path)
            onnx_program.save(str(path), external_data=True)
    return timings, facts


def _remove(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".data")):
        p.unlink(missing_ok=True)


# --- quantization ------------------------------------------------------------------------


def _untie_lm_head(model) -> str | None:
    """Give a MatMul whose weight arrives through a Transpose (a tied embedding, shared with
    the embedding Gather, stays untransposed in the file) its own transposed initializer, so
    the weight quantizers, which only quantize initializer weights, reach the lm head.
    Returns the name of the tied initializer, if any."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    tied = None
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        src = producers.get(node.input[1])
        if src is None or src.op_type != "Transpose" or src.input[0] not in inits:
            continue
        weight = numpy_helper.to_array(inits[src.input[0]])
        name = src.input[0] + ".T"
        model.graph.initializer.append(numpy_helper.from_array(weight.T.copy(), name))
        node.input[1] = name
        tied = src.input[0]
    used = {i for n in model.graph.node for i in n.input}
    kept = [n for n in model.graph.node if n.op_type != "Transpose" or n.output[0] in used]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return tied


def _share_embedding(model, tied: str, bits: int, block_size: int) -> bool:
    """Tied embeddings: replace the fp32 embedding Gather by GatherBlockQuantized over the
    lm head's MatMulNBits weights (both are [vocab, hidden] in row blocks), as ONNX Runtime
    GenAI's builder does; the fp32 table leaves the file."""
    from onnx import TensorProto, helper

    inits = {i.name: i for i in model.graph.initializer}
    gather = next((n for n in model.graph.node if n.op_type == "Gather" and n.input[0] == tied), None)
    head = next((n for n in model.graph.node if n.op_type == "MatMulNBits" and n.input[1].startswith(tied + ".T")), None)
    if gather is None or head is None or len(head.input) > 3:  # zero points (asymmetric): not ours
        return False
    vocab, blocks, block_bytes = inits[head.input[1]].dims  # [N, K/block, block*bits/8] uint8
    shape = helper.make_tensor(tied + ".q_shape", TensorProto.INT64, [2], [vocab, blocks * block_bytes])
    flat = tied + ".q_rows"
    reshape = helper.make_node("Reshape", [head.input[1], shape.name], [flat], name=tied + "/Reshape_q")
    replacement = helper.make_node(
        "GatherBlockQuantized", [flat, gather.input[1], head.input[2]], list(gather.output),
        name=gather.name + "_q", domain="com.microsoft",
        bits=bits, block_size=block_size, gather_axis=0, quantize_axis=1,
    )
    nodes = list(model.graph.node)
    at = nodes.index(gather)
    nodes[at : at + 1] = [reshape, replacement]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    kept = [i for i in model.graph.initializer if i.name != tied]
    del model.graph.initializer[:]
    model.graph.initializer.extend([*kept, shape])
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return True


def _quantize_embedding(model, bits: int, block_size: int) -> bool:
    """Untied embeddings: the fp32 table becomes GatherBlockQuantized over blocks quantized by
    ONNX Runtime's own MatMulNBits kernel (MLAS quantize_matmul_{4,8}bits, symmetric), laid
    out as _share_embedding's: the table is quantized as if it were a lm head ([hidden, vocab]
    MatMul weight), whose blocks run along hidden within each vocab row."""
    import numpy as np
    from onnx import helper, numpy_helper
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    inits = {i.name: i for i in model.graph.initializer}
    gather = next((n for n in model.graph.node if n.op_type == "Gather" and n.input[0] in inits
                   and n.input[1] == INPUT_IDS), None)
    if gather is None:
        return False
    table = numpy_helper.to_array(inits[gather.input[0]]).astype(np.float32)
    vocab, hidden = table.shape
    blocks = -(-hidden // block_size)
    weight = np.ascontiguousarray(np.pad(table, ((0, 0), (0, blocks * block_size - hidden))).T)
    packed = np.zeros((vocab, blocks, block_size * bits // 8), dtype=np.uint8)
    scales = np.zeros((vocab, blocks), dtype=np.float32)
    zero_points = np.zeros((vocab, -(-blocks * bits // 8)), dtype=np.uint8)
    quantize = quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits
    quantize(packed, weight, scales, zero_points, block_size, vocab, blocks * block_size, True)
    name = gather.input[0]
    data = numpy_helper.from_array(packed.reshape(vocab, -1), name + ".q_rows")
    scale = numpy_helper.from_array(scales, name + ".q_scales")
    replacement = helper.make_node(
        "GatherBlockQuantized", [data.name, gather.input[1], scale.name], list(gather.output),
        name=gather.name + "_q", domain="com.microsoft",
        bits=bits, block_size=block_size, gather_axis=0, quantize_axis=1,
    )
    nodes = list(model.graph.node)
    nodes[nodes.index(gather)] = replacement
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    kept = [i for i in model.graph.initializer if i.name != name]
    del model.graph.initializer[:]
    model.graph.initializer.extend([*kept, data, scale])
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return True


# scheme -> (bits, block size). int8 is MatMulNBits too, not quantize_dynamic: on SmolLM2-135M
# ONNX Runtime's dynamic int8 MatMul (per-channel weights, activations quantized per tensor)
# lost far more (min logit cosine 0.78, top-1 0.85) than 8-bit blocks of 32 (0.995, 0.95) at a
# similar decode speed (both run int8 kernels). Blocks of 64/128 fell to 0.977/0.989.
NBITS = {"int4": (4, INT4_BLOCK_SIZE), "int8": (8, 32)}


def _nbits_quantizer():
    """ONNX Runtime's MatMulNBitsQuantizer, imported without the logging.basicConfig(INFO)
    its module runs at import, which would print every later INFO log of the process."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return MatMulNBitsQuantizer


@quantizer("onnx", "int8", "int4", "auto")
def quantize_model(model, scheme: str, plan: dict[str, int] | None = None):
    """Quantize an in-memory onnx.ModelProto (weights loaded); return (model, facts).

    int4 / int8: ONNX Runtime's MatMulNBitsQuantizer, symmetric blocks (NBITS), on every
    MatMul weight including the lm head, accuracy_level 4 (int8 activations inside the
    kernel: the CPU setting ONNX Runtime GenAI's builder uses; level 0 ran 8-bit ~10x slower).
    A tied embedding is then read from the lm head's quantized blocks (GatherBlockQuantized);
    an untied one is quantized on its own to the same blocks (_quantize_embedding: ONNX
    Runtime's quantizers skip a lone Gather), except under auto, whose plans cover linears
    only. Measured on SmolLM2-135M int4: sharing takes
    model.onnx.data from 198 MB to 85 MB for top-1 agreement 0.600 -> 0.575 and perplexity
    30.07 -> 30.83 (reference 26.63), at the same decode speed.
    auto: `plan` (decoder module name -> 4 or 8) — one 4-bit pass leaving out the 8-bit
    MatMuls (by the names _readable_names gave them), then an 8-bit pass over those; a tied
    embedding shares the lm head's blocks at the head's bits.
    """
    MatMulNBitsQuantizer = _nbits_quantizer()
    facts: dict = {"scheme": scheme}
    bits, block = NBITS["int4" if plan is not None else scheme]
    tied = _untie_lm_head(model)
    log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = log.level
    log.setLevel(logging.WARNING)  # it logs every node at INFO
    eight_bit = [f"decoder.{name}/MatMul" for name, b in (plan or {}).items() if b == 8]
    try:
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=True, accuracy_level=4,
                                         op_types_to_quantize=("MatMul",), nodes_to_exclude=eight_bit)
        quantizer.process()
        model = quantizer.model.model
        if eight_bit:  # what the first pass left: the 8-bit MatMuls
            bits8, block8 = NBITS["int8"]
            quantizer = MatMulNBitsQuantizer(model, bits=bits8, block_size=block8, is_symmetric=True,
                                             accuracy_level=4, op_types_to_quantize=("MatMul",))
            quantizer.process()
            model = quantizer.model.model
    finally:
        log.setLevel(level)
    head_bits = 8 if "decoder.lm_head/MatMul" in eight_bit else bits
    if tied:
        embedding = f"int{head_bits} (read from the lm head's blocks)" if _share_embedding(
            model, tied, head_bits, block) else "fp32"
    else:  # a plan covers linears only on ONNX (onnx_weight_format), so auto keeps it fp32
        embedding = f"int{bits} (GatherBlockQuantized, blocks of {block})" if plan is None and _quantize_embedding(
            model, bits, block) else "fp32"
    bits = "4 and 8 (plan)" if plan is not None else bits
    facts.update(method="MatMulNBits", bits=bits, block_size=block, symmetric=True, accuracy_level=4,
                 quantized_matmuls=sum(n.op_type == "MatMulNBits" for n in model.graph.node),
                 embedding=embedding)
    return model, facts


def onnx_weight_format():
    """quantize.WeightFormat of quantize_model: MatMulNBits symmetric blocks (MLAS: the
    block's largest-magnitude weight maps to -2^(bits-1), fp32 scales), linears only (a tied
    embedding follows the head; an untied one is quantized apart, outside plans); activations
    are quantized inside the kernel (accuracy_level 4) per block, close to fp32, so not simulated."""

    def weight(module, kind: str, bits: int):
        import torch

        block = NBITS["int4" if bits == 4 else "int8"][1]
        w = module.weight.detach().float()
        rows, cols = w.shape
        pad = (-cols) % block
        blocks = torch.nn.functional.pad(w, (0, pad)).reshape(rows, -1, block)
        extreme = blocks.gather(-1, blocks.abs().argmax(-1, keepdim=True))
        scale = extreme / -(2 ** (bits - 1))
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        q = torch.clamp(torch.round(blocks / scale), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        return (q * scale).reshape(rows, -1)[:, :cols].contiguous()

    # overhead: SmolLM2-135M's model.onnx + .data came out 1.29 MB above the weights' bytes at two plans
    return WeightFormat(weight, {("linear", 4): 0.5 + 4 / 32, ("linear", 8): 1 + 4 / 32}, kinds=("linear",),
                        overhead_bytes_per_layer=43_000, embedding_follows_head=True)


quantizer("onnx", "fp32", "fp16")(no_quantization)  # fp16 is exported in fp16 (export_onnx)


def _save(model, path: Path) -> None:
    """Write model + external data next to `path`, replacing the old pair only when complete."""
    import onnx

    tmp = path.parent / (path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        onnx.save_model(model, str(tmp / path.name), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
        for name in (path.name, path.name + ".data"):
            os.replace(tmp / name, path.parent / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class OnnxTarget(Target):
    name = "onnx"
    default_scheme = "int4"
    runtime = "ONNX Runtime GenAI"
    packages = ("onnx", "onnxscript", "onnxruntime", "onnxruntime-genai", "torch")
    # Measured: int4 export of a 1.1B model (4.4 GB fp32) peaked at 10.1 GB RSS.
    export_memory_factor = 2.3
    required_modules = (*CONVERTER_MODULES, "onnxruntime_genai")
    install = "pip install 'mobilekit[onnx]'"

    def export(self, request: ExportRequest) -> Artefact:
        self.check_scheme(request.scheme)
        self.check_available(CONVERTER_MODULES)
        spec = request.decoder.spec
        path = Path(request.out_dir) / MODEL_FILE
        timings, quantization = export_onnx(request.decoder, request.max_seq_len, path, request.scheme, request.progress,
                                            request.plan)

        config = genai_config(spec, request.max_seq_len, request.bos_id, request.eos_ids)
        (Path(request.out_dir) / GENAI_CONFIG).write_text(json.dumps(config, indent=4) + "\n")
        kv_dtype = "float16" if request.scheme == "fp16" else "float32"
        extra = {
            "timings": {k: round(v, 3) for k, v in timings.items()},
            "genai_config": GENAI_CONFIG,
            "quantization": quantization,
            "exporter": "torch.onnx.export(dynamo=True)",
        }
        return Artefact(files=[MODEL_FILE, DATA_FILE, GENAI_CONFIG], io=io_contract(spec, request.max_seq_len, kv_dtype),
                        extra=extra)

    def weight_format(self):
        return onnx_weight_format()

    def open_session(self, bundle_dir: Path, manifest: dict):
        self.check_available(CONVERTER_MODULES)
        return OnnxSession(Path(bundle_dir) / MODEL_FILE, manifest["max_seq_len"])

    def app_runtime_greedy(self, bundle_dir: Path, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        self.check_available()
        return genai_greedy(bundle_dir, prompt_ids, max_new_tokens)

    def generate(self, bundle_dir: Path, manifest: dict, prompt: str, max_new_tokens: int,
                 on_text: Callable[[str], None]) -> GenerationResult:
        self.check_available()
        return genai_generate(Path(bundle_dir), prompt, max_new_tokens, on_text)


TARGET = OnnxTarget()
