"""DecoderSpec: everything the one mobilekit decoder needs to know about an architecture.

A family module turns a checkpoint's config into a DecoderSpec; the decoder never reads
a Hugging Face config itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mobilekit.errors import CheckpointError

ACTIVATIONS = ("silu", "gelu", "gelu_tanh")


@dataclass(frozen=True)
class Llama3RopeScaling:
    """Llama 3.1's static rewrite of the rotary frequencies (ARCHITECTURES.md §2)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int
    kind: str = "llama3"


@dataclass(frozen=True)
class LongRopeScaling:
    """Phi-3's LongRoPE (ARCHITECTURES.md §9): per-frequency divisors and a cos/sin scale.
    Exports are limited to original_max_position_embeddings, where the short factors apply
    (transformers switches to the long ones only past that length)."""

    short_factor: tuple[float, ...]
    long_factor: tuple[float, ...]
    original_max_position_embeddings: int
    attention_factor: float
    kind: str = "longrope"


ROPE_SCALINGS = {"llama3": Llama3RopeScaling, "longrope": LongRopeScaling}


@dataclass(frozen=True)
class DecoderSpec:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int
    norm_eps: float = 1e-5
    activation: str = "silu"
    rope_theta: float = 10000.0
    rope_scaling: Llama3RopeScaling | LongRopeScaling | None = None
    qkv_bias: bool = False  # biases on q/k/v projections (Llama attention_bias, Qwen2)
    output_bias: bool = False  # bias on the attention output projection (Llama attention_bias)
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    # Mistral-style sliding window; None = full attention. The decoder keeps a full-length
    # cache, which is exact only while the context is no longer than the window.
    sliding_window: int | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise CheckpointError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise CheckpointError(f"head_dim ({self.head_dim}) must be even for rotary embeddings")
        if self.activation not in ACTIVATIONS:
            raise CheckpointError(
                f"Unsupported activation {self.activation!r}. Supported: {', '.join(ACTIVATIONS)}"
            )

    @classmethod
    def from_dict(cls, stored: dict) -> "DecoderSpec":
        """Inverse of dataclasses.asdict (how manifests store the spec)."""
        fields = dict(stored)
        unknown = set(fields) - set(cls.__dataclass_fields__)
        if unknown:
            raise CheckpointError(f"decoder_spec has fields this mobilekit does not know: {sorted(unknown)}")
        scaling = fields.get("rope_scaling")
        if isinstance(scaling, dict):
            kind = scaling.get("kind", "llama3")
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in scaling.items()}
            fields["rope_scaling"] = ROPE_SCALINGS[kind](**values)
        return cls(**fields)

    @property
    def max_exportable_context(self) -> int:
        """Longest context the decoder computes exactly as the reference does."""
        if isinstance(self.rope_scaling, LongRopeScaling):
            return min(self.max_position_embeddings, self.rope_scaling.original_max_position_embeddings)
        return self.max_position_embeddings

    @property
    def attention_scale(self) -> float:
        return 1.0 / math.sqrt(self.head_dim)

    @property
    def num_parameters(self) -> int:
        d, hd, inter = self.hidden_size, self.head_dim, self.intermediate_size
        attn = d * hd * (self.num_heads * 2 + self.num_kv_heads * 2)
        attn += hd * (self.num_heads + 2 * self.num_kv_heads) * self.qkv_bias + d * self.output_bias
        mlp = 3 * d * inter
        per_layer = attn + mlp + 2 * d
        embed = self.vocab_size * d
        head = 0 if self.tie_word_embeddings else embed
        return self.num_layers * per_layer + embed + head + d
