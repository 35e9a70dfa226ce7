"""ExecuTorch target: `model.pte` for ExecuTorch's LLM runner (TextLLMRunner / LlmModule / TextRunner).

Contract: forward(tokens [1,T] int64, input_pos [1] int64) -> logits [1,V] of the last
token. The KV cache lives in mutable buffers updated by ExecuTorch's `llama::update_cache`
and read by `llama::custom_sdpa`; linears run on XNNPACK. The runner reads the constant
methods below, with names exactly as its C++ code looks them up.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from mobilekit.errors import ExportError, TargetUnavailable
from mobilekit.modeling import Decoder
from mobilekit.modeling.decoder import RMSNorm, Rotary, rotary_attention_factor, rotary_inv_freq
from mobilekit.targets import Artefact, ExportRequest, GenerationResult, Target

MODEL_FILE = "model.pte"


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
    delegate call. Same math as RMSNorm (fp32 models)."""

    def __init__(self, norm: RMSNorm):
        super().__init__()
        self.eps, self.weight = norm.eps, norm.weight
        dim = norm.weight.shape[0]
        self.register_buffer("mean_weight", torch.full((1, dim), 1.0 / dim), persistent=False)

    def forward(self, x):
        mean_sq = torch.nn.functional.linear(x * x, self.mean_weight)
        return self.weight * (x * torch.rsqrt(mean_sq + self.eps))


class MatmulRotary(nn.Module):
    """rotate_half as a signed permutation matrix: XNNPACK rejects the dynamic-length
    slices of the usual form, which would split every layer into extra partitions."""

    def __init__(self, head_dim: int):
        super().__init__()
        half = head_dim // 2
        rotate = torch.zeros(head_dim, head_dim)
        rotate[torch.arange(half), torch.arange(half) + half] = -1.0  # out[:half] = -x[half:]
        rotate[torch.arange(half) + half, torch.arange(half)] = 1.0  # out[half:] = x[:half]
        self.register_buffer("rotate", rotate, persistent=False)

    def forward(self, x, cos, sin):
        return x * cos + torch.nn.functional.linear(x, self.rotate) * sin


def xnnpack_friendly(module: nn.Module, head_dim: int) -> None:
    """In place: swap the decoder's norms and rotaries for forms XNNPACK delegates whole."""
    for name, child in module.named_children():
        if isinstance(child, RMSNorm):
            setattr(module, name, LinearMeanRMSNorm(child))
        elif isinstance(child, Rotary):
            setattr(module, name, MatmulRotary(head_dim))
        else:
            xnnpack_friendly(child, head_dim)


class ExecuTorchDecoder(nn.Module):
    """The decoder with a KV cache in mutable buffers, in ExecuTorch's custom-op layout
    [1, max_seq_len, kv_heads, head_dim]."""

    def __init__(self, decoder: Decoder, max_seq_len: int):
        super().__init__()
        spec = decoder.spec
        self.decoder = decoder
        self.max_seq_len = max_seq_len
        # Rotary angles are computed in the graph from the positions rather than stored as
        # [max_seq_len, head_dim] tables: that is 1 MB of .pte at 2048 tokens, for a few
        # hundred cos/sin per token at run time.
        self.register_buffer("inv_freq", rotary_inv_freq(spec), persistent=False)
        self.rope_scale = rotary_attention_factor(spec)
        shape = (1, max_seq_len, spec.num_kv_heads, spec.head_dim)
        for i in range(spec.num_layers):
            self.register_buffer(f"k_cache_{i}", torch.zeros(shape), persistent=False)
            self.register_buffer(f"v_cache_{i}", torch.zeros(shape), persistent=False)

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        seq_len = tokens.shape[1]
        start = input_pos[0].item()
        torch._check_is_size(start)
        torch._check(start + seq_len <= self.max_seq_len)
        positions = torch.arange(seq_len, dtype=torch.float32) + start
        angles = torch.outer(positions, self.inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        cos, sin = angles.cos(), angles.sin()
        if self.rope_scale != 1.0:
            cos, sin = cos * self.rope_scale, sin * self.rope_scale
        scale = self.decoder.spec.attention_scale

        def attend(i, q, k, v):
            k_cache, v_cache = getattr(self, f"k_cache_{i}"), getattr(self, f"v_cache_{i}")
            torch.ops.llama.update_cache(k, k_cache, start)
            torch.ops.llama.update_cache(v, v_cache, start)
            out = torch.ops.llama.custom_sdpa(q, k_cache, v_cache, start, None, 0, True, scale)
            return out.reshape(q.shape[0], -1, q.shape[2] * q.shape[3])

        return self.decoder(tokens, cos, sin, attend, last_only=True)


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


def constant_methods(request: ExportRequest) -> dict:
    spec = request.decoder.spec
    return {
        "get_max_seq_len": request.max_seq_len,
        "get_max_context_len": request.max_seq_len,
        "get_vocab_size": spec.vocab_size,
        "get_n_layers": spec.num_layers,
        "get_bos_id": request.bos_id if request.bos_id is not None else -1,
        "get_eos_ids": list(request.eos_ids),
        "use_kv_cache": True,
        "use_sdpa_with_kv_cache": True,
        "enable_dynamic_shape": True,
    }


class ExecuTorchTarget(Target):
    name = "executorch"
    schemes = ("fp32", "int8", "int4")
    default_scheme = "int4"
    runtime = "ExecuTorch TextLLMRunner"
    packages = ("executorch", "torch", "torchao")

    def check_available(self) -> None:
        _load_custom_ops()

    def export(self, request: ExportRequest) -> Artefact:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
        from executorch.exir.passes import MemoryPlanningPass
        from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass
        from torch.export import Dim

        from mobilekit.quantize import quantize_for_executorch

        _load_custom_ops()
        self.check_scheme(request.scheme)
        spec = request.decoder.spec
        module = ExecuTorchDecoder(request.decoder, request.max_seq_len).eval()
        xnnpack_friendly(module, spec.head_dim)
        timings = {}

        t0 = time.perf_counter()
        request.progress(f"quantizing ({request.scheme})")
        quantize_for_executorch(module, request.scheme)
        timings["quantize_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        request.progress("torch.export")
        example = (torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, dtype=torch.long))
        seq = Dim("seq_len", min=1, max=request.max_seq_len - 1)
        try:
            with torch.no_grad():
                program = torch.export.export(module, example, dynamic_shapes=({1: seq}, None), strict=False)
        except Exception as e:
            raise ExportError(f"torch.export of the ExecuTorch decoder failed: {e}") from e
        timings["torch_export_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        request.progress("lowering to XNNPACK")
        with _lean_xnnpack_passes():
            edge = to_edge_transform_and_lower(
                program,
                partitioner=[XnnpackPartitioner()],
                compile_config=EdgeCompileConfig(_check_ir_validity=False, _skip_dim_order=True),
                constant_methods=constant_methods(request),
            )
        timings["lower_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        request.progress("emitting .pte")
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
        timings["emit_s"] = time.perf_counter() - t0

        cache_shape = [1, request.max_seq_len, spec.num_kv_heads, spec.head_dim]
        io = {
            "method": "forward",
            "inputs": [
                {"name": "tokens", "dtype": "int64", "shape": [1, "T"]},
                {"name": "input_pos", "dtype": "int64", "shape": [1]},
            ],
            "outputs": [{"name": "logits", "dtype": "float32", "shape": [1, spec.vocab_size]}],
            "kv_cache": {
                "kind": "mutable buffers (llama::update_cache, llama::custom_sdpa)",
                "layers": spec.num_layers,
                "kv_heads": spec.num_kv_heads,
                "head_dim": spec.head_dim,
                "shape_per_layer": cache_shape,
                "dtype": "float32",
            },
            "constant_methods": constant_methods(request),
        }
        return Artefact(files=[MODEL_FILE], io=io, extra={"timings": timings, "backend": "XNNPACK"})

    def open_session(self, bundle_dir: Path, manifest: dict):
        from mobilekit.runtime.executorch import ExecuTorchSession

        _load_custom_ops()
        return ExecuTorchSession(bundle_dir / MODEL_FILE, manifest["max_seq_len"])

    def generate(self, bundle_dir: Path, manifest: dict, prompt: str, max_new_tokens: int,
                 on_text: Callable[[str], None]) -> GenerationResult:
        from mobilekit.runtime.executorch import runner_generate

        _load_custom_ops()
        return runner_generate(bundle_dir / MODEL_FILE, bundle_dir / "tokenizer.json", prompt, max_new_tokens, on_text,
                               add_bos=manifest.get("add_bos", False))


TARGET = ExecuTorchTarget()
