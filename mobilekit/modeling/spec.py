"""DecoderSpec: everything the one mobilekit decoder needs to know about an architecture.

A family module turns a checkpoint's config into a DecoderSpec; the decoder never reads
a Hugging Face config itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from mobilekit.errors import CheckpointError

ACTIVATIONS = ("silu", "gelu", "gelu_tanh")
NORMS = ("rms", "layer")  # RMSNorm (Llama style) | LayerNorm (with bias unless norm_bias is False)
MLPS = ("gated", "plain")  # down(act(gate(x)) * up(x)) | fc_out(act(fc_in(x)))
# sequential: h += attn(norm1(h)); h += mlp(norm2(h))
# parallel: h += attn(norm1(h)) + mlp(norm2(h))             (GPT-NeoX)
# parallel_shared_norm: x = norm1(h); h += attn(x) + mlp(x) (Phi-2)
RESIDUALS = ("sequential", "parallel", "parallel_shared_norm")
# What each layer is, and so the state it carries between calls (STATE_KINDS):
# "full" / "sliding": attention over a KV cache (sliding: the window is a mask over it);
# "conv": LFM2's gated short convolution, whose state is its last conv_kernel - 1 inputs;
# "delta": Qwen3.5's Gated DeltaNet (linear attention), whose state is a short conv's (over
# q, k and v) plus one [key_dim, value_dim] matrix per value head, updated every token.
LAYER_TYPES = ("full", "sliding", "conv", "delta")
STATE_KINDS = {"full": "kv", "sliding": "kv", "conv": "conv", "delta": "delta"}
# Where q/k norms apply: "head" = over head_dim, per head, after the head split (Gemma 3,
# OpenELM); "full" = over all heads' lanes at once, before the split (open_lm).
QK_NORM_WIDTHS = ("head", "full")


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
    lm_head_bias: bool = False  # Phi-2
    tie_word_embeddings: bool = False
    norm: str = "rms"
    mlp: str = "gated"
    residual: str = "sequential"
    # Gemma: the attention and MLP outputs are normalized again before the residual add.
    sandwich_norms: bool = False
    # False: no norms before the sub-layers; only the output norms (sandwich_norms) remain (OLMo 2)
    pre_norms: bool = True
    qk_norm: bool = False  # Gemma 3: RMSNorm over head_dim on q and k, before rotary
    # Rotary lanes per head (the first rotary_dim of head_dim; the rest pass through).
    # None = all of head_dim; 0 = no rotary (GPT-2's learned positions instead).
    rotary_dim: int | None = None
    rope_theta_local: float | None = None  # Gemma 3: sliding layers' own rotary base
    learned_positions: bool = False  # GPT-2: h = wte[ids] + wpe[positions]
    embedding_scale: float = 1.0  # Gemma: h = wte[ids] * sqrt(hidden_size)
    # Attention scale = query_pre_attn_scalar^-1/2 (Gemma) instead of head_dim^-1/2.
    query_pre_attn_scalar: float | None = None
    attention_softcap: float | None = None  # Gemma 2: scores = c * tanh(scores / c)
    final_softcap: float | None = None  # Gemma 2: logits = c * tanh(logits / c)
    # Sliding-window attention: a query sees itself and the previous sliding_window - 1
    # tokens. layer_types names each layer "full" or "sliding"; empty = every layer sliding
    # when sliding_window is set (Mistral), else full. Targets keep a full-length cache and
    # apply the window as a mask: exact at any context, but the cache is not smaller.
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()
    # Per-layer sizes (OpenELM's layer-wise scaling). Empty = every layer uses num_heads /
    # num_kv_heads / intermediate_size; when set, those three hold the maximum over layers.
    layer_num_heads: tuple[int, ...] = ()
    layer_num_kv_heads: tuple[int, ...] = ()
    layer_intermediate_sizes: tuple[int, ...] = ()
    norm_bias: bool = True  # norm "layer" only: False = gain-only LayerNorm (open_lm)
    qk_norm_width: str = "head"  # QK_NORM_WIDTHS
    # MiniCPM's muP scales: each sub-layer output times residual_scale before its residual
    # add; the final hidden state divided by logit_divisor before the lm head.
    residual_scale: float = 1.0
    logit_divisor: float = 1.0
    # "conv" layers (LFM2): taps of the depthwise causal convolution (config conv_L_cache),
    # and whether its projections and taps have biases (conv_bias).
    conv_kernel: int = 3
    conv_bias: bool = False
    # Attention layers with no rotary at all (SmolLM3's NoPE layers, every 4th): their q and
    # k go to attention as projected (and normed).
    nope_layers: tuple[int, ...] = ()
    # Qwen3.5: q_proj also yields a per-head gate; the attention output is times sigmoid(gate).
    attention_output_gate: bool = False
    # "delta" layers (Qwen3.5's Gated DeltaNet): heads and head sizes of its keys (and
    # queries) and of its values (config linear_num_key_heads, linear_key_head_dim, ...); its
    # short conv has conv_kernel taps and no bias.
    delta_key_heads: int = 0
    delta_key_dim: int = 0
    delta_value_heads: int = 0
    delta_value_dim: int = 0
    # Gemma 3n. AltUp: the residual stream is altup_inputs streams; each layer runs on the
    # altup_active one (predicted from all by learned coefficients) and its output corrects
    # every stream; 0 = one plain stream.
    altup_inputs: int = 0
    altup_active: int = 0
    altup_correct_scale: bool = True
    # LAuReL: a rank-laurel_rank residual branch beside attention (0 = none).
    laurel_rank: int = 0
    # Per-layer embeddings: a second token table of per_layer_input_size lanes per layer (its
    # first per_layer_vocab_size tokens), mixed with a projection of the token embedding and
    # gated into the residual after each layer (0 = none).
    per_layer_input_size: int = 0
    per_layer_vocab_size: int = 0
    # Per layer, the fraction of the MLP gate's lanes zeroed by a Gaussian top-k before the
    # activation (empty = none).
    activation_sparsity: tuple[float, ...] = ()
    # The last kv_shared_layers layers compute no keys or values: each attends over those
    # of the last earlier layer of its type (kv_source).
    kv_shared_layers: int = 0
    # RMSNorm without scale on v (Gemma 3n).
    value_norm: bool = False
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        self._check_field_types()
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                     "intermediate_size", "max_position_embeddings"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise CheckpointError(f"{name} must be a positive whole number, not {value!r}")
        self._check_layer_sizes()
        for i in range(self.num_layers):
            if self.layer_heads(i) % self.layer_kv_heads(i):
                raise CheckpointError(
                    f"num_heads ({self.layer_heads(i)}) must be a multiple of num_kv_heads "
                    f"({self.layer_kv_heads(i)})" + (f" in layer {i}" if not self.uniform_layers else "")
                )
        if self.head_dim % 2:
            raise CheckpointError(f"head_dim ({self.head_dim}) must be even for rotary embeddings")
        for value, allowed, what in ((self.activation, ACTIVATIONS, "activation"), (self.norm, NORMS, "norm"),
                                     (self.mlp, MLPS, "mlp"), (self.residual, RESIDUALS, "residual")):
            if value not in allowed:
                raise CheckpointError(f"Unsupported {what} {value!r}. Supported: {', '.join(allowed)}")
        if self.rotary_width % 2 or self.rotary_width > self.head_dim:
            raise CheckpointError(f"rotary_dim ({self.rotary_dim}) must be even and at most head_dim ({self.head_dim})")
        if self.layer_types:
            if len(self.layer_types) != self.num_layers or set(self.layer_types) - set(LAYER_TYPES):
                raise CheckpointError(
                    f"layer_types must name each of the {self.num_layers} layers one of {', '.join(LAYER_TYPES)}"
                )
            if "sliding" in self.layer_types and not self.sliding_window:
                raise CheckpointError("layer_types has sliding layers but sliding_window is not set")
        if self.delta_layers and (min(self.delta_key_heads, self.delta_key_dim, self.delta_value_heads,
                                      self.delta_value_dim) < 1 or self.delta_value_heads % self.delta_key_heads):
            raise CheckpointError(
                "delta layers need positive delta_key_heads, delta_key_dim, delta_value_heads and delta_value_dim, "
                f"with value heads a multiple of key heads (got {self.delta_key_heads}, {self.delta_key_dim}, "
                f"{self.delta_value_heads}, {self.delta_value_dim})")
        if self.delta_layers and "conv" in self.layer_types:
            raise CheckpointError("a decoder has conv layers or delta layers, not both (their conv states differ in width)")
        if self.conv_layers and (isinstance(self.conv_kernel, bool) or not isinstance(self.conv_kernel, int)
                                 or self.conv_kernel < 2):
            raise CheckpointError(f"conv_kernel must be a whole number of at least 2, not {self.conv_kernel!r}")
        if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.num_layers for i in self.nope_layers):
            raise CheckpointError(f"nope_layers {list(self.nope_layers)} must be layer indices below {self.num_layers}")
        if self.qk_norm_width not in QK_NORM_WIDTHS:
            raise CheckpointError(f"qk_norm_width {self.qk_norm_width!r} must be one of {', '.join(QK_NORM_WIDTHS)}")
        if self.qk_norm_width == "full" and not self.qk_norm:
            raise CheckpointError('qk_norm_width "full" needs qk_norm')
        if not self.pre_norms and (not self.sandwich_norms or self.residual != "sequential"):
            raise CheckpointError(
                "pre_norms False (OLMo 2's post-sublayer norms) needs sandwich_norms and residual sequential")
        if not self.norm_bias and self.norm != "layer":
            raise CheckpointError('norm_bias False (gain-only LayerNorm) needs norm "layer"')
        self._check_gemma3n_fields()
        if self.residual_scale <= 0 or self.logit_divisor <= 0:
            raise CheckpointError(
                f"residual_scale ({self.residual_scale}) and logit_divisor ({self.logit_divisor}) must be positive"
            )

    def _check_field_types(self):
        """Each scalar field of the type it declares: a family passes some config.json values
        through as they are, and a wrong kind must fail here, not deep inside an export."""
        for f in fields(self):
            value, kind = getattr(self, f.name), str(f.type)
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            whole = isinstance(value, int) and not isinstance(value, bool)
            optional = kind.endswith("| None") and value is None
            if ((kind.startswith("float") and not (number or optional))
                    or (kind == "bool" and not isinstance(value, bool))
                    or (kind == "int | None" and not (optional or (whole and value >= 0)))):
                raise CheckpointError(f"{f.name} must be {kind.replace(' | None', ' or null')}, not {value!r}")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise CheckpointError(f"sliding_window must be at least 1, not {self.sliding_window!r}")

    def _check_layer_sizes(self):
        pairs = (("layer_num_heads", "num_heads"), ("layer_num_kv_heads", "num_kv_heads"),
                 ("layer_intermediate_sizes", "intermediate_size"))
        for name, whole in pairs:
            values = getattr(self, name)
            if values and len(values) != self.num_layers:
                raise CheckpointError(f"{name} has {len(values)} entries; it needs one per layer ({self.num_layers})")
            if values and max(values) != getattr(self, whole):
                raise CheckpointError(f"{whole} ({getattr(self, whole)}) must be the largest of {name} ({max(values)})")
        if bool(self.layer_num_heads) != bool(self.layer_num_kv_heads):
            raise CheckpointError("layer_num_heads and layer_num_kv_heads are set together or not at all")

    def _check_gemma3n_fields(self):
        if self.altup_inputs and not 0 <= self.altup_active < self.altup_inputs:
            raise CheckpointError(f"altup_active ({self.altup_active}) must be below altup_inputs ({self.altup_inputs})")
        if self.altup_inputs == 1:
            raise CheckpointError("altup_inputs must be 0 (no AltUp) or at least 2")
        if bool(self.per_layer_input_size) != bool(self.per_layer_vocab_size):
            raise CheckpointError("per_layer_input_size and per_layer_vocab_size are set together or not at all")
        if self.per_layer_input_size and not self.altup_inputs:
            raise CheckpointError("per-layer embeddings are supported with AltUp (Gemma 3n) only")
        if self.activation_sparsity and (len(self.activation_sparsity) != self.num_layers
                                         or any(not 0.0 <= s < 1.0 for s in self.activation_sparsity)):
            raise CheckpointError(f"activation_sparsity needs one fraction in [0, 1) per layer ({self.num_layers})")
        if not 0 <= self.kv_shared_layers < self.num_layers:
            raise CheckpointError(f"kv_shared_layers ({self.kv_shared_layers}) must be below num_layers ({self.num_layers})")
        for i in range(self.num_layers - self.kv_shared_layers, self.num_layers):
            if self.layer_state(i) != "kv" or self.kv_source(i) is None:
                raise CheckpointError(
                    f"layer {i} shares keys and values (kv_shared_layers {self.kv_shared_layers}) but no earlier "
                    f"layer of its type ({self.layer_type(i)}) computes them")

    @classmethod
    def from_dict(cls, stored: dict) -> "DecoderSpec":
        """Inverse of dataclasses.asdict (how manifests store the spec)."""
        fields = dict(stored)
        unknown = set(fields) - set(cls.__dataclass_fields__)
        if unknown:
            raise CheckpointError(f"decoder_spec has fields this mobilekit does not know: {sorted(unknown)}")
        for name in ("layer_types", "layer_num_heads", "layer_num_kv_heads", "layer_intermediate_sizes", "nope_layers",
                     "activation_sparsity"):
            if isinstance(fields.get(name), list):
                fields[name] = tuple(fields[name])
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
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    @property
    def rotary_width(self) -> int:
        return self.head_dim if self.rotary_dim is None else self.rotary_dim

    def layer_type(self, layer: int) -> str:
        """One of LAYER_TYPES (an empty layer_types: every layer sliding when sliding_window
        is set, else full)."""
        if self.layer_types:
            return self.layer_types[layer]
        return "sliding" if self.sliding_window else "full"

    def layer_state(self, layer: int) -> str:
        """The kind of state `layer` carries between calls: "kv", "conv" or "delta" (STATE_KINDS)."""
        return STATE_KINDS[self.layer_type(layer)]

    @property
    def attention_layers(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_layers) if self.layer_state(i) == "kv")

    @property
    def conv_layers(self) -> tuple[int, ...]:
        """The layers with a conv state: LFM2's conv layers, and delta layers (whose q/k/v
        pass a short conv first)."""
        return tuple(i for i in range(self.num_layers) if self.layer_state(i) in ("conv", "delta"))

    @property
    def delta_layers(self) -> tuple[int, ...]:
        """The layers with a recurrent matrix state (Gated DeltaNet)."""
        return tuple(i for i in range(self.num_layers) if self.layer_state(i) == "delta")

    @property
    def conv_channels(self) -> int:
        """Channels of every conv state: the hidden size (LFM2), or q, k and v side by side
        (a delta layer's conv runs before the head split)."""
        if self.delta_layers:
            return 2 * self.delta_key_heads * self.delta_key_dim + self.delta_value_heads * self.delta_value_dim
        return self.hidden_size

    @property
    def recurrent_state_shape(self) -> tuple[int, int, int, int]:
        """[batch 1, value heads, key dim, value dim]: a delta layer's matrix state."""
        return (1, self.delta_value_heads, self.delta_key_dim, self.delta_value_dim)

    def kv_source(self, layer: int) -> int | None:
        """The layer whose keys and values `layer` attends over when it shares them (one of the
        last kv_shared_layers: the last layer of its type before them, as transformers'
        kv_sharing_modes), else None."""
        first_shared = self.num_layers - self.kv_shared_layers
        if layer < first_shared:
            return None
        earlier = [i for i in range(first_shared) if self.layer_type(i) == self.layer_type(layer)]
        return earlier[-1] if earlier else None

    @property
    def kv_sources(self) -> tuple[int, ...]:
        """The layers whose keys and values later layers share."""
        return tuple(sorted({self.kv_source(i) for i in range(self.num_layers)} - {None}))

    def layer_sparsity(self, layer: int) -> float:
        return self.activation_sparsity[layer] if self.activation_sparsity else 0.0

    def layer_window(self, layer: int) -> int | None:
        """The sliding window of `layer`, or None for full causal attention (and conv layers)."""
        if self.sliding_window is None or self.layer_state(layer) != "kv":
            return None
        if self.layer_types and self.layer_types[layer] != "sliding":
            return None
        return self.sliding_window

    def layer_rope(self, layer: int) -> str | None:
        """Which rotary table `layer` uses: "local" (Gemma 3 sliding layers) or "global";
        None for a layer without rotary (nope_layers, or no rotary lanes at all)."""
        if not self.rotary_width or layer in self.nope_layers:
            return None
        return "local" if self.rope_theta_local is not None and self.layer_window(layer) else "global"

    @property
    def rope_kinds(self) -> tuple[str, ...]:
        """The rotary tables the attention layers use (what a target computes or stores)."""
        return tuple(sorted({self.layer_rope(i) for i in self.attention_layers} - {None}))

    def layer_heads(self, layer: int) -> int:
        return self.layer_num_heads[layer] if self.layer_num_heads else self.num_heads

    def layer_kv_heads(self, layer: int) -> int:
        return self.layer_num_kv_heads[layer] if self.layer_num_kv_heads else self.num_kv_heads

    def layer_intermediate(self, layer: int) -> int:
        return self.layer_intermediate_sizes[layer] if self.layer_intermediate_sizes else self.intermediate_size

    @property
    def uniform_layers(self) -> bool:
        """Whether every layer has the same head counts and MLP width."""
        return not (self.layer_num_heads or self.layer_num_kv_heads or self.layer_intermediate_sizes)

    @property
    def uniform_kv_heads(self) -> bool:
        """Whether every layer's KV cache has the same number of heads."""
        return len({self.layer_kv_heads(i) for i in range(self.num_layers)}) <= 1

    @property
    def has_sliding_layers(self) -> bool:
        return any(self.layer_window(i) for i in range(self.num_layers))

    @property
    def num_parameters(self) -> int:
        d, hd = self.hidden_size, self.head_dim
        per_norm = 2 if self.norm == "layer" and self.norm_bias else 1  # weight (+ bias) per lane
        norms = {"sequential": 2, "parallel": 2, "parallel_shared_norm": 1}[self.residual] * self.pre_norms
        norms += 2 * self.sandwich_norms
        total = 0
        for i in range(self.num_layers):
            heads, kv, inter = self.layer_heads(i), self.layer_kv_heads(i), self.layer_intermediate(i)
            if self.layer_state(i) == "conv":  # in_proj d->3d, out_proj d->d, taps d x k (+ biases)
                attn = 4 * d * d + d * self.conv_kernel + (3 * d + d + d) * self.conv_bias
            elif self.layer_state(i) == "delta":  # qkv, z, b, a in; out; conv taps; dt_bias, A_log; gated norm
                values = self.delta_value_heads * self.delta_value_dim
                attn = (d * (self.conv_channels + values + 2 * self.delta_value_heads) + values * d
                        + self.conv_channels * self.conv_kernel + 2 * self.delta_value_heads + self.delta_value_dim)
            else:
                attn = d * hd * (heads * (2 + self.attention_output_gate) + kv * 2)
                attn += hd * (heads + 2 * kv) * self.qkv_bias + d * self.output_bias
            if self.kv_source(i) is not None:  # no k/v projections (nor their norm)
                attn -= d * hd * kv * 2 + 2 * hd * kv * self.qkv_bias + per_norm * hd * self.qk_norm
            if self.qk_norm and self.layer_state(i) == "kv":
                attn += per_norm * hd * (2 if self.qk_norm_width == "head" else heads + kv)
            if self.altup_inputs:  # AltUp's coefficients, router and norm, output scale
                n = self.altup_inputs
                attn += n * n + n * n * n + d * n + 2 * d
            if self.laurel_rank:  # two low-rank projections and their norm
                attn += 2 * d * self.laurel_rank + d
            if self.per_layer_input_size:  # gate in, projection out, their norm
                attn += 2 * d * self.per_layer_input_size + d
            mlp = (3 if self.mlp == "gated" else 2) * d * inter + (inter + d) * self.mlp_bias
            total += attn + mlp + norms * per_norm * d
        embed = self.vocab_size * d
        head = (0 if self.tie_word_embeddings else embed) + self.vocab_size * self.lm_head_bias
        positions = self.max_position_embeddings * d * self.learned_positions
        if self.altup_inputs:  # the streams' projections in and out
            total += 2 * (self.altup_inputs - 1) * d * d
        if self.per_layer_input_size:  # the per-layer table, the projection into it and its norm
            lanes = self.num_layers * self.per_layer_input_size
            total += self.per_layer_vocab_size * lanes + d * lanes + self.per_layer_input_size
        return total + embed + head + positions + per_norm * d
