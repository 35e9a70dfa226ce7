"""Quantization schemes: one registry of names and validation budgets, with the
per-target implementations that realize each scheme.

Budgets bound what validation may see between the reference (HF eager fp32) and the
artefact run through its runtime. They were set from measurement on SmolLM2-135M and
tiny random models (numbers in README "Validation budgets"); a recipe may tighten or
loosen them for its model in its `[budgets.<scheme>]` table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Callable

from mobilekit.errors import ExportError, RecipeError, SchemeNotSupported, UnknownNameError


@dataclass(frozen=True)
class Budget:
    """Bounds on validation metrics; None = reported but not gated."""

    max_abs_logit_error: float | None = None
    min_cosine: float | None = None
    min_mean_cosine: float | None = None
    min_top1_agreement: float | None = None
    min_greedy_match: float | None = None
    max_ppl_increase_pct: float | None = None
    # Long greedy continuations (validate.degeneration) that degenerate where the reference's
    # do not. Non-words ("upona_d_m") are never chance: none allowed. A loop can be: a 135M
    # model's greedy text falls into one by chance, one plan looping where a smaller one did
    # not (README "Validation"), so one loop of the four is allowed, two fail.
    max_degenerate_continuations: int | None = 1
    max_garbled_continuations: int | None = 0
    # Short chat answers that degenerate where the reference answers in a sentence: a chat
    # answer is the first thing an app shows, and not chance-prone the way a 128-token story
    # is (the reference's answers end within GREEDY_TOKENS), so none is allowed.
    max_degenerate_answers: int | None = 0

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
# Tightened in issue 21 to what int4 measures now (SmolLM2 stage 2: ExecuTorch top-1 62.5%,
# ppl +16.0%; ONNX 58.8%, +14.5%; Core ML 73.8%, +5.9%), with a margin. `auto` is held to
# the same floor; its goal is what it chooses against.
INT4_BUDGET = Budget(min_mean_cosine=0.8, min_top1_agreement=0.5, max_ppl_increase_pct=20.0)

SCHEMES = {
    s.name: s
    for s in (
        Scheme("fp32", "float32 weights and compute", FP32_BUDGET, 32),
        Scheme("fp16", "float16 weights and compute", FP16_BUDGET, 16),
        Scheme("int8", "8-bit per-channel weights", INT8_BUDGET, 8.5),
        Scheme("int4", "4-bit linear weights in blocks of 32 (embeddings: per target, see the README)", INT4_BUDGET,
               5.5),
        # a goal (--max-size / --max-ppl-increase) picks 4 or 8 bits per group (precision.py);
        # the disk check assumes the 8-bit end
        Scheme("auto", "4 or 8 bits per group of weights, chosen by measurement against a size or quality goal",
               INT4_BUDGET, 8.5),
    )
}
# Schemes that need more than a name (a goal): not in the nightly matrix's default sweep.
GOAL_SCHEMES = ("auto",)


def names() -> list[str]:
    return list(SCHEMES)


def fixed_names() -> list[str]:
    return [name for name in SCHEMES if name not in GOAL_SCHEMES]


def get(name: str) -> Scheme:
    if name not in SCHEMES:
        raise UnknownNameError("quant scheme", name, names())
    return SCHEMES[name]


def budget_for(name: str, overrides: dict | None = None) -> Budget:
    return get(name).budget.with_overrides(overrides or {})


# --- --quant auto: its goal, and how each target stores a weight (the search: mobilekit.precision)


@dataclass(frozen=True)
class Goal:
    max_size_bytes: int | None = None
    max_ppl_increase_pct: float | None = None

    def __post_init__(self):
        if (self.max_size_bytes is None) == (self.max_ppl_increase_pct is None):
            raise ExportError("--quant auto needs exactly one goal: --max-size SIZE (e.g. 110MB) or "
                              "--max-ppl-increase PERCENT (e.g. 5)")

    def describe(self) -> str:
        if self.max_size_bytes is not None:
            return f"at most {self.max_size_bytes / 1e6:.1f} MB"
        return f"perplexity at most +{self.max_ppl_increase_pct:g}% on the calibration text"


def parse_size(text: str) -> int:
    """'110MB', '1.2GB', '900M', '104857600' -> bytes (decimal units, as file sizes are shown)."""
    units = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9}
    raw = text.strip().upper()
    number = raw.rstrip("KMGB")
    try:
        value = float(number) * units[raw[len(number):]]
    except (ValueError, KeyError):
        raise ExportError(f"--max-size {text!r} is not a size; write e.g. 110MB or 1.2GB") from None
    if not math.isfinite(value) or value <= 0:
        raise ExportError(f"--max-size {text!r} must be a positive size, e.g. 110MB")
    return int(value)


@dataclass
class WeightFormat:
    """How one target stores weights: `weight(module, kind, bits)` -> the dequantized fp32
    weight its quantizer would produce; `bytes_per_weight[(kind, bits)]`; and whether it
    quantizes linears' input activations (to simulate them: dynamic per-token int8)."""

    weight: Callable
    bytes_per_weight: dict
    int8_activations: bool = False
    kinds: tuple[str, ...] = ("embedding", "linear")  # what the target quantizes by plan
    # A tied embedding is read from the lm head's quantized weight (ONNX's GatherBlockQuantized,
    # Core ML's one const), so the head's bits are the embedding's too
    embedding_follows_head: bool = False
    overhead_bytes_per_layer: int = 0  # the format's own, measured (program, block headers)


# --- quantizers: one per (target, scheme) ------------------------------------------------
#
# A target offers exactly the schemes it registers a quantizer for, and asking for any other
# pair is an error: nothing falls through to another scheme's quantizer. What a quantizer
# takes and returns is its target's business (a torch module before torch.export on
# ExecuTorch, an onnx.ModelProto on ONNX, an MLModel on Core ML); the registry only keeps the
# pairs honest. Adding a scheme: its Scheme above (name, budget), then one @quantizer per
# target that offers it, in that target's module.


@dataclass(frozen=True)
class Quantizer:
    target: str
    scheme: str
    apply: Callable
    # True where `apply(module, scheme)` works on any part of the decoder, so the checkpoint
    # can quantize each layer as it loads (Checkpoint.build_decoder's `prepare`): a 12B model
    # then never exists whole at fp32.
    layerwise: bool = False

    def __call__(self, model, plan: dict[str, int] | None = None):
        """apply(model, scheme, plan=plan), after the rule every target shares: `auto` takes
        a plan (decoder module -> bits), and no other scheme does."""
        if (plan is None) == (self.scheme == "auto"):
            raise ExportError(f"the {self.target} quantizer for scheme {self.scheme!r} was given "
                              f"{'no ' if plan is None else 'a '}plan")
        return self.apply(model, self.scheme, plan=plan)

    @property
    def changes_weights(self) -> bool:
        """False for the float schemes' no_quantization: the target saves what it exported."""
        return self.apply is not no_quantization


QUANTIZERS: dict[tuple[str, str], Quantizer] = {}


def quantizer(target: str, *schemes: str, layerwise: bool = False):
    """Decorator: register the function as `target`'s quantizer for each of `schemes`."""
    def register(apply: Callable) -> Callable:
        for scheme in schemes:
            get(scheme)  # a scheme needs its budget first
            if (target, scheme) in QUANTIZERS:
                raise ValueError(f"two quantizers registered for target {target!r}, scheme {scheme!r}")
            QUANTIZERS[(target, scheme)] = Quantizer(target, scheme, apply, layerwise)
        return apply
    return register


def schemes_of(target: str) -> tuple[str, ...]:
    """The schemes `target` registered quantizers for, in SCHEMES order."""
    return tuple(name for name in SCHEMES if (target, name) in QUANTIZERS)


def quantizer_for(target: str, scheme: str) -> Quantizer:
    if (target, scheme) not in QUANTIZERS:
        raise SchemeNotSupported(f"target {target} does not offer quant scheme {scheme!r}. It offers: "
                                 f"{', '.join(schemes_of(target))}")
    return QUANTIZERS[(target, scheme)]


def no_quantization(model, *_args, **_kwargs):
    """The quantizer of the float schemes: the weights stay as the target exports them."""
    return model
