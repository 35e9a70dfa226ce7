"""ExecuTorch target: `model.pte` for ExecuTorch's LLM runner (TextLLMRunner / LlmModule / TextRunner).

Contract: forward(tokens [1,T] int64, input_pos [1] int64) -> logits [1,V] of the last
token. The KV cache lives in mutable buffers updated by ExecuTorch's `llama::update_cache`
and read by `llama::custom_sdpa`; linears run on XNNPACK. The runner reads the constant
methods below, with names exactly as its C++ code looks them up.

The module that is exported (ExecuTorchDecoder) and its XNNPACK-friendly forms live in
mobilekit.lowering.executorch. This module imports no torch at import time, so `mobilekit
list` and `info` can read its schemes (the quantizers registered below) without loading it:
torch, torchao and executorch are imported inside the functions that compute.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from mobilekit.formats import layer_states
from mobilekit.formats.executorch import (FORWARD_METHOD, INPUT_POS, LOGITS, MODEL_FILE, TOKENIZER_FILE, TOKENS,
                                          constant_methods as runner_constant_methods, conv_state_buffer, recurrent_state_buffer,
                                          kv_cache_buffers)
from mobilekit.lowering import stage
from mobilekit.memory import release_free_memory
from mobilekit.quantize import WeightFormat, no_quantization, quantizer
from mobilekit.targets import Artefact, ExportRequest, GenerationResult, Target

if TYPE_CHECKING:
    from mobilekit.modeling import DecoderSpec


def constant_methods(request: ExportRequest) -> dict:
    spec = request.decoder.spec
    from mobilekit.modeling.decoder import max_call_tokens

    calls = max_call_tokens(spec, request.max_seq_len) if spec.delta_layers else None
    return runner_constant_methods(request.max_seq_len, spec.vocab_size, spec.num_layers, request.bos_id,
                                   request.eos_ids, calls)


def cache_notes(spec: DecoderSpec) -> dict:
    """What the manifest says about attention beyond plain causal: which layers mask a
    sliding window over the (still full-length) cache, which attend explicitly, and each
    layer's cache shape where layers differ in kv heads."""
    from mobilekit.lowering.executorch import attention_plan

    plan = [how for how in attention_plan(spec) if how != "conv"]
    layers = spec.attention_layers
    notes = {"attention": {kind: [i for i, how in zip(layers, plan) if how == kind] for kind in dict.fromkeys(plan)}}
    windowed = [i for i in range(spec.num_layers) if spec.layer_window(i) is not None]
    if windowed:
        notes["sliding_window"] = {
            "window": spec.sliding_window,
            "layers": windowed,
            "note": "every layer's cache is full-length (max_seq_len); the window is an attention mask, "
                    "exact at any context but no saving in memory",
        }
    if spec.attention_softcap is not None:
        notes["attention_softcap"] = spec.attention_softcap
    if not spec.uniform_kv_heads:
        # OpenELM: one buffer per layer, each with that layer's kv heads (kv_heads is the largest)
        notes["kv_heads_per_layer"] = [spec.layer_kv_heads(i) for i in range(spec.num_layers)]
        notes["per_layer_shapes"] = "layer i's buffers are [1, max_seq_len, kv_heads_per_layer[i], head_dim]; " \
                                    "shape_per_layer gives the largest"
    return notes


def states_in_buffers(spec: DecoderSpec) -> list[dict]:
    """formats.layer_states, each with the mutable buffers that hold it in the program
    (internal to the .pte: the runner drives every kind alike, by input_pos)."""
    states = layer_states(spec)
    for state in states:
        i = state["layer"]
        state["buffers"] = {"conv": [conv_state_buffer(i)], "delta": [conv_state_buffer(i), recurrent_state_buffer(i)],
                            "kv": list(kv_cache_buffers(i))}[state["kind"]]
    return states


# --- quantization: torchao source transforms applied before torch.export -----------------


def _not_yet_quantized(module) -> bool:
    import torch

    return type(module.weight) in (torch.Tensor, torch.nn.Parameter) and module.weight.dtype.is_floating_point


# Weights larger than this are quantized a block of rows at a time, from whatever dtype they
# are stored in: quantizing a 12B model's 671M-entry head in one go takes several fp32 copies
# of it (HQQ's working set), gigabytes a 24 GB machine no longer has once the layers are in.
# Rows are independent in both layouts used here (per-row scales, groups of 32 within a row).
ROW_CHUNK_ELEMENTS = 1 << 24


def _quantize_module(module, config) -> None:
    import torch
    from torch import nn
    from torchao.quantization.quant_api import quantize_

    weight = module.weight
    if weight.numel() <= ROW_CHUNK_ELEMENTS:
        module.weight = nn.Parameter(weight.float(), requires_grad=False)
        quantize_(module, config, filter_fn=lambda m, _name: m is module)
        return
    rows = max(1, ROW_CHUNK_ELEMENTS // weight.shape[1])
    parts = []
    for start in range(0, weight.shape[0], rows):
        with torch.device("meta"):
            piece = (nn.Embedding(1, 1) if isinstance(module, nn.Embedding) else nn.Linear(1, 1, bias=False))
        piece.weight = nn.Parameter(weight[start:start + rows].float(), requires_grad=False)
        quantize_(piece, config, filter_fn=lambda m, _name, piece=piece: m is piece)
        parts.append(piece.weight)
    del weight, piece
    # one quantized tensor again, of the same torchao class, as if quantized whole
    kind = type(parts[0])
    data = {name: torch.cat([getattr(p, name) for p in parts]) for name in kind.tensor_data_names}
    attributes = {name: getattr(parts[0], name) for name in kind.tensor_attribute_names}
    del parts
    module.weight = nn.Parameter(kind(**data, **attributes), requires_grad=False)


# Bits each kind of weight gets per scheme on ExecuTorch. int4 keeps the lm head at 8 bits
# and stores the token embedding at 4 (quantized_decomposed::embedding_4bit): with HQQ
# 4-bit heads the embedded SmolLM2 wrote "Once upona_d_m_d_s_s_s…" for a story prompt and
# looped on plain text; the 8-bit head is paid for by the 4-bit embedding, same size
# (README "Choosing int4 for ExecuTorch").
# Keyed by a module's own name first (lm_head, GPT-2's learned embed_positions), then kind.
EXECUTORCH_BITS = {
    "int8": {"embedding": 8, "linear": 8, "lm_head": 8, "embed_positions": 8},
    "int4": {"embedding": 4, "linear": 4, "lm_head": 8, "embed_positions": 8},
}


INT4_GROUP_SIZE = 32  # int4 linears: 8da4w's weight groups along the input axis
INT4_EMBEDDING_GROUP_SIZE = 64  # int4 embedding rows


def executorch_config(kind: str, bits: int):
    """The torchao config for one weight, in forms XNNPACK (linears, dynamic int8
    activations) or ExecuTorch's quantized kernels (embeddings) run natively.

    linear 8: 8da8w, per-channel. linear 4: 8da4w, groups of 32, HQQ-chosen scales.
    embedding 8: per row. embedding 4: groups of 64 with fp32 scales (fp16 scales come out
    of ExecuTorch 1.5.1's embedding_4bit kernel as garbage, measured on a tiny Llama; groups
    of 32 would add 1.8 MB to SmolLM2, over its int4 size).

    HQQ because of measurement on SmolLM2-135M (README, "Choosing int4"): with plain
    round-to-nearest scales the int4 model degenerates into repetition and its perplexity
    rises ~40%; HQQ scales, same size and kernel, ~19%."""
    import torch
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_api import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
    from torchao.quantization.quantize_.workflows.intx.intx_choose_qparams_algorithm import (
        IntxChooseQParamsAlgorithm,
    )

    if kind == "embedding":
        if bits == 8:
            return IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))
        return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(INT4_EMBEDDING_GROUP_SIZE))
    if bits == 8:
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))
    return Int8DynamicActivationIntxWeightConfig(
        weight_dtype=torch.int4, weight_granularity=PerGroup(INT4_GROUP_SIZE),
        intx_choose_qparams_algorithm=IntxChooseQParamsAlgorithm.HQQ_SCALE_ONLY,
    )


@quantizer("executorch", "int8", "int4", layerwise=True)
@quantizer("executorch", "auto")
def quantize_for_executorch(module, scheme: str, plan: dict[str, int] | None = None) -> None:
    """In place, with torchao (executorch_config), each weight at the bits EXECUTORCH_BITS
    gives its kind under `scheme`, or that `plan` gives its name (--quant auto: names as in
    the Decoder, `precision.Plan.bits()`). GPT-2's learned position table is an embedding
    too. Biased linears keep an fp32 bias; a tied lm head is quantized as a linear, apart
    from its embedding. Weights still in a 16-bit stored dtype are quantized from it (the
    result computes in fp32), large ones in blocks of rows."""
    import torch

    from mobilekit.modeling import Decoder

    root = next((m for m in module.modules() if isinstance(m, Decoder)), module)
    names = {id(m): name for name, m in root.named_modules()}

    def bits_of(sub, kind: str) -> int:
        name = names.get(id(sub), "")
        if plan is not None and name in plan:
            return plan[name]
        table = EXECUTORCH_BITS["int4" if plan is not None else scheme]  # what a plan leaves out
        return table.get(name.split(".")[-1], table[kind])

    # Embeddings first: a tied head shares the embedding's float weight until then.
    # Modules quantized while loading (layer_quantizer) are skipped: quantizing is idempotent.
    for cls, kind in ((torch.nn.Embedding, "embedding"), (torch.nn.Linear, "linear")):
        for sub in [m for m in module.modules() if isinstance(m, cls) and _not_yet_quantized(m)]:
            bits = bits_of(sub, kind)
            if kind == "linear" and bits == 4 and sub.in_features % INT4_GROUP_SIZE:
                # 8da4w's groups cannot split a row shorter than a group (Gemma 3n's AltUp
                # coefficients read 4 lanes): such a weight, a few dozen values, stays fp32
                continue
            if kind == "embedding" and bits == 4 and sub.embedding_dim % INT4_EMBEDDING_GROUP_SIZE:
                bits = 8  # rows that 4-bit groups cannot tile (a tiny model's table) go per row at 8
            _quantize_module(sub, executorch_config(kind, bits))


def executorch_weight_format():
    """precision.WeightFormat of quantize_for_executorch: bytes as XNNPACK stores them
    (bf16 block scales), int8 dynamic activations."""
    def weight(module, kind: str, bits: int):
        from torch import nn

        piece = nn.Embedding(1, 1) if kind == "embedding" else nn.Linear(1, 1, bias=False)
        piece.weight = nn.Parameter(module.weight.detach().float().clone(), requires_grad=False)
        _quantize_module(piece, executorch_config(kind, bits))
        return piece.weight.dequantize().float()

    # overhead: SmolLM2-135M's .pte came out 0.53 MB above the weights' bytes at two plans
    return WeightFormat(weight, {("linear", 4): 0.5 + 2 / 32, ("linear", 8): 1.0,
                                 ("embedding", 4): 0.5 + 4 / 64, ("embedding", 8): 1.0}, int8_activations=True,
                        overhead_bytes_per_layer=18_000)


quantizer("executorch", "fp32")(no_quantization)


class ExecuTorchTarget(Target):
    name = "executorch"
    default_scheme = "int4"
    runtime = "ExecuTorch TextLLMRunner"
    packages = ("executorch", "torch", "torchao")
    # importing them registers torch.ops.llama.update_cache / custom_sdpa (eager and export)
    # and the quantized kernels the runtime needs for 8-bit embeddings
    required_modules = ("executorch.extension.llm.custom_ops.custom_ops", "executorch.kernels.quantized")
    # fp32 only (int8/int4 quantize layer by layer as the weights load). Not measured: the
    # base class's conservative 3x (lowering copies the weights into the delegate blob).

    def export(self, request: ExportRequest) -> Artefact:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
        from executorch.exir.passes import MemoryPlanningPass
        from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass
        import torch
        from torch.export import Dim

        from mobilekit.lowering.executorch import (ExecuTorchDecoder, lean_xnnpack_passes, partitions_share_weights,
                                                   xnnpack_friendly)

        self.check_available()
        self.check_scheme(request.scheme)
        spec = request.decoder.spec
        module = ExecuTorchDecoder(request.decoder, request.max_seq_len).eval()
        xnnpack_friendly(module, spec)
        timings = {}

        with stage(timings, "quantize_s", request.progress, f"quantizing ({request.scheme})"):
            self.quantizer(request.scheme)(module, plan=request.plan)

        example = (torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, dtype=torch.long))
        from mobilekit.modeling.decoder import max_call_tokens

        seq = Dim("seq_len", min=1, max=max_call_tokens(spec, request.max_seq_len))
        with stage(timings, "torch_export_s", request.progress, "torch.export",
                   failing="torch.export of the ExecuTorch decoder"), torch.no_grad():
            program = torch.export.export(module, example, dynamic_shapes=({1: seq}, None), strict=False)

        methods = constant_methods(request)
        with stage(timings, "lower_s", request.progress, "lowering to XNNPACK"), lean_xnnpack_passes(), \
                partitions_share_weights():
            edge = to_edge_transform_and_lower(
                program,
                partitioner=[XnnpackPartitioner()],
                compile_config=EdgeCompileConfig(_check_ir_validity=False, _skip_dim_order=True),
                constant_methods=methods,
            )
        # XNNPACK now holds its own packed copy of every linear weight: free the torchao
        # tensors before serializing, or a 12B model's weights are held twice at the peak.
        del program, module
        request.decoder = None
        release_free_memory()

        with stage(timings, "emit_s", request.progress, "emitting .pte"):
            executorch_program = edge.to_executorch(
                ExecutorchBackendConfig(
                    extract_delegate_segments=True,
                    do_quant_fusion_and_const_prop=True,
                    memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
                    sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass(),
                )
            )
            with open(request.out_dir / MODEL_FILE, "wb") as f:
                executorch_program.write_to_file(f)

        cache_shape = [1, request.max_seq_len, spec.num_kv_heads, spec.head_dim]
        io = {
            "method": FORWARD_METHOD,
            "inputs": [
                {"name": TOKENS, "dtype": "int64", "shape": [1, "T"]},
                {"name": INPUT_POS, "dtype": "int64", "shape": [1]},
            ],
            "outputs": [{"name": LOGITS, "dtype": "float32", "shape": [1, spec.vocab_size]}],
            "kv_cache": {
                "kind": "mutable buffers (llama::update_cache, llama::custom_sdpa)",
                "layers": len(spec.attention_layers),  # conv layers keep conv_state_i (layer_states)
                "kv_heads": spec.num_kv_heads,
                "head_dim": spec.head_dim,
                "shape_per_layer": cache_shape,
                "dtype": "float32",
                **cache_notes(spec),
            },
            "layer_states": states_in_buffers(spec),
            "constant_methods": methods,
        }
        return Artefact(files=[MODEL_FILE], io=io, extra={"timings": timings, "backend": "XNNPACK"})

    def weight_format(self):
        return executorch_weight_format()

    def open_session(self, bundle_dir: Path, manifest: dict):
        from mobilekit.runtime.executorch import ExecuTorchSession

        self.check_available()
        return ExecuTorchSession(bundle_dir / MODEL_FILE, manifest["max_seq_len"],
                                 manifest.get("io", {}).get("constant_methods", {}).get("get_max_seq_len"))

    def generate(self, bundle_dir: Path, manifest: dict, prompt: str, max_new_tokens: int,
                 on_text: Callable[[str], None]) -> GenerationResult:
        from mobilekit.runtime.executorch import runner_generate

        self.check_available()
        return runner_generate(bundle_dir / MODEL_FILE, bundle_dir / TOKENIZER_FILE, prompt, max_new_tokens, on_text,
                               add_bos=manifest.get("add_bos", False))


TARGET = ExecuTorchTarget()
