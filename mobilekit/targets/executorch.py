"""ExecuTorch target: `model.pte` for ExecuTorch's LLM runner (TextLLMRunner / LlmModule / TextRunner).

Contract: forward(tokens [1,T] int64, input_pos [1] int64) -> logits [1,V] of the last
token. The KV cache lives in mutable buffers updated by ExecuTorch's `llama::update_cache`
and read by `llama::custom_sdpa`; linears run on XNNPACK. The runner reads the constant
methods below, with names exactly as its C++ code looks them up.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from mobilekit.errors import TargetUnavailable
from mobilekit.formats.executorch import (FORWARD_METHOD, INPUT_POS, LOGITS, MODEL_FILE, TOKENIZER_FILE, TOKENS,
                                          constant_methods as runner_constant_methods)
from mobilekit.lowering import replace_modules, spell_out_tanh_gelu, stage
from mobilekit.memory import release_free_memory
from mobilekit.modeling import Decoder, DecoderSpec
from mobilekit.modeling.decoder import LayerNorm, RMSNorm, Rotary, rotary_attention_factor, rotary_inv_freq
from mobilekit.quantize import WeightFormat, no_quantization, quantizer
from mobilekit.runtime.executorch import ExecuTorchSession, runner_generate
from mobilekit.targets import Artefact, ExportRequest, GenerationResult, Target


def _load_custom_ops() -> None:
    try:
        # Registers torch.ops.llama.update_cache / custom_sdpa (eager + export) and the
        # quantized kernels the runtime needs for 8-bit embeddings.
        import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
        import executorch.kernels.quantized  # noqa: F401
    except ImportError as e:
        raise TargetUnavailable(f"ExecuTorch is not installed ({e}): pip install 'mobilekit'") from e


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
    "explicit": matmul, softcap, mask, softmax, matmul (custom_sdpa has no softcap)."""
    plan = []
    for i in range(spec.num_layers):
        if spec.attention_softcap is not None:
            plan.append("explicit")
        elif spec.layer_window(i) is not None:
            plan.append("custom_sdpa_masked")
        else:
            plan.append("custom_sdpa")
    return plan


def explicit_attention(q, k_cache, v_cache, mask, scale: float, softcap: float | None):
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
    if softcap is None:
        scores = scores * scale
    else:
        scores = torch.tanh(scores * (scale / softcap)) * softcap
    probs = torch.softmax(scores + mask, dim=-1)
    out = torch.bmm(probs, v).reshape(kv, groups, -1, hd)
    return out.permute(2, 0, 1, 3).reshape(1, -1, h * hd)


class ExecuTorchDecoder(nn.Module):
    """The decoder with a KV cache in mutable buffers, in ExecuTorch's custom-op layout
    [1, max_seq_len, kv_heads, head_dim]. The cache is full-length in every layer: sliding
    windows are applied as masks, exact at any context but no smaller in memory."""

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
        for i in range(spec.num_layers):  # per-layer kv heads (OpenELM): each buffer its own size
            shape = (1, max_seq_len, spec.layer_kv_heads(i), spec.head_dim)
            self.register_buffer(f"k_cache_{i}", torch.zeros(shape), persistent=False)
            self.register_buffer(f"v_cache_{i}", torch.zeros(shape), persistent=False)

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
        windows = {spec.layer_window(i) for i, how in enumerate(self.plan) if how != "custom_sdpa"}
        if not windows:
            return {}
        query = (torch.arange(seq_len) + start)[:, None]
        key = torch.arange(self.max_seq_len)[None, :]
        causal = key <= query
        return {w: causal if w is None else causal & (key > query - w) for w in windows}

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
        masks = {w: torch.where(allowed, 0.0, torch.finfo(torch.float32).min)
                 for w, allowed in self._masks(start, seq_len).items()}
        # explicit attention takes the mask repeated once per query head of a kv head
        grouped = {}
        for i, how in enumerate(self.plan):
            key = (spec.layer_window(i), spec.layer_heads(i) // spec.layer_kv_heads(i))
            if how == "explicit" and key not in grouped:
                grouped[key] = masks[key[0]].repeat(key[1], 1) if key[1] > 1 else masks[key[0]]
        scale = spec.attention_scale

        def attend(i, q, k, v):
            k_cache, v_cache = getattr(self, f"k_cache_{i}"), getattr(self, f"v_cache_{i}")
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

        return self.decoder(tokens, rope, attend, last_only=True, positions=positions)


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
def _lean_xnnpack_passes():
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
def _partitions_share_weights():
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


def constant_methods(request: ExportRequest) -> dict:
    spec = request.decoder.spec
    return runner_constant_methods(request.max_seq_len, spec.vocab_size, spec.num_layers, request.bos_id,
                                   request.eos_ids)


def cache_notes(spec: DecoderSpec) -> dict:
    """What the manifest says about attention beyond plain causal: which layers mask a
    sliding window over the (still full-length) cache, which attend explicitly, and each
    layer's cache shape where layers differ in kv heads."""
    plan = attention_plan(spec)
    notes = {"attention": {kind: [i for i, how in enumerate(plan) if how == kind] for kind in dict.fromkeys(plan)}}
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


# --- quantization: torchao source transforms applied before torch.export -----------------


def _not_yet_quantized(module) -> bool:
    return type(module.weight) in (torch.Tensor, torch.nn.Parameter) and module.weight.dtype.is_floating_point


# Weights larger than this are quantized a block of rows at a time, from whatever dtype they
# are stored in: quantizing a 12B model's 671M-entry head in one go takes several fp32 copies
# of it (HQQ's working set), gigabytes a 24 GB machine no longer has once the layers are in.
# Rows are independent in both layouts used here (per-row scales, groups of 32 within a row).
ROW_CHUNK_ELEMENTS = 1 << 24


def _quantize_module(module, config) -> None:
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
        quantize_(piece, config, filter_fn=lambda m, _name: m is piece)
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
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_api import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
    from torchao.quantization.quantize_.workflows.intx.intx_choose_qparams_algorithm import (
        IntxChooseQParamsAlgorithm,
    )

    if kind == "embedding":
        if bits == 8:
            return IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))
        return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(64))
    if bits == 8:
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))
    return Int8DynamicActivationIntxWeightConfig(
        weight_dtype=torch.int4, weight_granularity=PerGroup(32),
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
            _quantize_module(sub, executorch_config(kind, bits_of(sub, kind)))


def executorch_weight_format():
    """precision.WeightFormat of quantize_for_executorch: bytes as XNNPACK stores them
    (bf16 block scales), int8 dynamic activations."""
    def weight(module, kind: str, bits: int):
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
    # fp32 only (int8/int4 quantize layer by layer as the weights load). Not measured: the
    # base class's conservative 3x (lowering copies the weights into the delegate blob).

    def check_available(self) -> None:
        _load_custom_ops()

    def export(self, request: ExportRequest) -> Artefact:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
        from executorch.exir.passes import MemoryPlanningPass
        from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass
        from torch.export import Dim

        _load_custom_ops()
        self.check_scheme(request.scheme)
        spec = request.decoder.spec
        module = ExecuTorchDecoder(request.decoder, request.max_seq_len).eval()
        xnnpack_friendly(module, spec)
        timings = {}

        with stage(timings, "quantize_s", request.progress, f"quantizing ({request.scheme})"):
            self.quantizer(request.scheme).apply(module, request.scheme, plan=request.plan)

        example = (torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, dtype=torch.long))
        seq = Dim("seq_len", min=1, max=request.max_seq_len - 1)
        with stage(timings, "torch_export_s", request.progress, "torch.export",
                   failing="torch.export of the ExecuTorch decoder"), torch.no_grad():
            program = torch.export.export(module, example, dynamic_shapes=({1: seq}, None), strict=False)

        methods = constant_methods(request)
        with stage(timings, "lower_s", request.progress, "lowering to XNNPACK"), _lean_xnnpack_passes(), \
                _partitions_share_weights():
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
                "layers": spec.num_layers,
                "kv_heads": spec.num_kv_heads,
                "head_dim": spec.head_dim,
                "shape_per_layer": cache_shape,
                "dtype": "float32",
                **cache_notes(spec),
            },
            "constant_methods": methods,
        }
        return Artefact(files=[MODEL_FILE], io=io, extra={"timings": timings, "backend": "XNNPACK"})

    def weight_format(self):
        return executorch_weight_format()

    def open_session(self, bundle_dir: Path, manifest: dict):
        _load_custom_ops()
        return ExecuTorchSession(bundle_dir / MODEL_FILE, manifest["max_seq_len"])

    def generate(self, bundle_dir: Path, manifest: dict, prompt: str, max_new_tokens: int,
                 on_text: Callable[[str], None]) -> GenerationResult:
        _load_custom_ops()
        return runner_generate(bundle_dir / MODEL_FILE, bundle_dir / TOKENIZER_FILE, prompt, max_new_tokens, on_text,
                               add_bos=manifest.get("add_bos", False))


TARGET = ExecuTorchTarget()
