"""Quantization schemes: one registry of names and validation budgets, with the
per-target implementations that realize each scheme.

Budgets bound what validation may see between the reference (HF eager fp32) and the
artefact run through its runtime. They were set from measurement on SmolLM2-135M and
tiny random models (numbers in README "Validation budgets"); a recipe may tighten or
loosen them for its model in its `[budgets.<scheme>]` table.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from mobilekit.errors import RecipeError, UnknownNameError


@dataclass(frozen=True)
class Budget:
    """Bounds on validation metrics; None = reported but not gated."""

    max_abs_logit_error: float | None = None
    min_cosine: float | None = None
    min_mean_cosine: float | None = None
    min_top1_agreement: float | None = None
    min_greedy_match: float | None = None
    max_ppl_increase_pct: float | None = None

    def with_overrides(self, overrides: dict) -> "Budget":
        names = {f.name for f in fields(self)}
        unknown = set(overrides) - names
        if unknown:
            raise RecipeError(f"unknown budget metric(s) {sorted(unknown)}; known: {sorted(names)}")
        return replace(self, **overrides)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class Scheme:
    name: str
    description: str
    budget: Budget
    # Average bits an artefact stores per model weight (8-bit embeddings and per-block
    # scales included): what the pipeline's free-disk check expects a bundle to need.
    bits_per_weight: float


# Set from measurement with a margin; what was measured is in README "Validation budgets".
# fp32 must be exact up to float reassociation. Quantized budgets bound the damage seen on
# SmolLM2-135M (a small model is the fragile case) so that a broken lowering, a wrong
# layout or a bad quantizer setting fails, while the chosen scheme passes.
FP32_BUDGET = Budget(
    max_abs_logit_error=1e-3, min_cosine=0.99999, min_top1_agreement=0.99, min_greedy_match=1.0,
    max_ppl_increase_pct=0.1,
)
FP16_BUDGET = Budget(min_mean_cosine=0.995, min_top1_agreement=0.9, max_ppl_increase_pct=2.0)
INT8_BUDGET = Budget(min_mean_cosine=0.98, min_top1_agreement=0.8, max_ppl_increase_pct=6.0)
# Stage 1 when the model is too large for an fp32 reference: decoder and reference both
# compute in bf16, so they differ by bf16 rounding of two different op orders.
BF16_REFERENCE_BUDGET = Budget(min_mean_cosine=0.99, min_top1_agreement=0.85, max_ppl_increase_pct=3.0)
INT4_BUDGET = Budget(min_mean_cosine=0.8, min_top1_agreement=0.45, max_ppl_increase_pct=25.0)

SCHEMES = {
    s.name: s
    for s in (
        Scheme("fp32", "float32 weights and compute", FP32_BUDGET, 32),
        Scheme("fp16", "float16 weights and compute", FP16_BUDGET, 16),
        Scheme("int8", "8-bit per-channel weights", INT8_BUDGET, 8.5),
        Scheme("int4", "4-bit linear weights in blocks of 32 (embeddings: per target, see the README)", INT4_BUDGET,
               5.5),
    )
}


def names() -> list[str]:
    return list(SCHEMES)


def get(name: str) -> Scheme:
    if name not in SCHEMES:
        raise UnknownNameError("quant scheme", name, names())
    return SCHEMES[name]


def budget_for(name: str, overrides: dict | None = None) -> Budget:
    return get(name).budget.with_overrides(overrides or {})


# --- ExecuTorch: torchao source transforms applied before torch.export -----------------


def layer_quantizer(target: str, scheme: str):
    """A function that quantizes part of the decoder in place as the checkpoint loads it
    (Checkpoint.build_decoder's `prepare`: each layer as it completes, then the whole
    decoder, whose embeddings and head are still in their stored dtype), or None where the
    target quantizes the whole model itself. This way a 12B model never exists whole at
    fp32, nor does its 671M-entry embedding or head."""
    if target == "executorch" and scheme != "fp32":
        return lambda module: quantize_for_executorch(module, scheme)
    return None


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
        quantize_(piece, config, filter_fn=lambda m, _name: m is piece)
        parts.append(piece.weight)
    del weight, piece
    # one quantized tensor again, of the same torchao class, as if quantized whole
    kind = type(parts[0])
    data = {name: torch.cat([getattr(p, name) for p in parts]) for name in kind.tensor_data_names}
    attributes = {name: getattr(parts[0], name) for name in kind.tensor_attribute_names}
    del parts
    module.weight = nn.Parameter(kind(**data, **attributes), requires_grad=False)


def quantize_for_executorch(module, scheme: str) -> None:
    """In place, with torchao, in forms XNNPACK runs natively (dynamic int8 activations);
    embeddings are 8-bit per row in both schemes, GPT-2's learned position table too (one
    scale per position row; same gather kernel as the tokens; 4x smaller than fp32 and its
    error far below the 4-bit linears'). Biased linears (Qwen2 q/k/v, Phi-2's lm head) keep
    an fp32 bias; a tied lm head is quantized as a linear, apart from its embedding.
    Weights still in a 16-bit stored dtype are quantized from it (the result computes in
    fp32), large ones in blocks of rows.

    int8: linears 8da8w (8-bit per-channel weights).
    int4: linears 8da4w (4-bit weights in groups of 32) with HQQ-chosen scales.

    HQQ because of measurement on SmolLM2-135M (README, "Choosing int4"): with plain
    round-to-nearest scales the int4 model degenerates into repetition ("vast vast vast")
    and its perplexity rises ~40%; HQQ scales, same size and same kernel, keep it coherent
    (~19%). An 8-bit lm head helps further but costs 10 MB, over the size target.
    """
    if scheme == "fp32":
        return
    import torch
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_api import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
    from torchao.quantization.quantize_.workflows.intx.intx_choose_qparams_algorithm import (
        IntxChooseQParamsAlgorithm,
    )

    embedding_config = IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))
    if scheme == "int8":
        linear_config = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))
    else:
        linear_config = Int8DynamicActivationIntxWeightConfig(
            weight_dtype=torch.int4,
            weight_granularity=PerGroup(32),
            intx_choose_qparams_algorithm=IntxChooseQParamsAlgorithm.HQQ_SCALE_ONLY,
        )
    # Embeddings first: a tied head shares the embedding's float weight until then.
    # Modules quantized while loading (layer_quantizer) are skipped: quantizing is idempotent.
    for kind, config in ((torch.nn.Embedding, embedding_config), (torch.nn.Linear, linear_config)):
        for sub in [m for m in module.modules() if isinstance(m, kind) and _not_yet_quantized(m)]:
            _quantize_module(sub, config)
