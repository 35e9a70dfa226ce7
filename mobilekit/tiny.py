"""Tiny random checkpoints of a real architecture, built locally (no hub): for tests and
for `--checkpoint-mode tiny` runs. Weights are seeded; the tokenizer is a real byte-level
BPE trained on mobilekit's bundled text, with ChatML special tokens and chat template."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch

TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
}

# Qwen2: q/k/v biases, no o_proj bias, tied embeddings, rope theta 1e6.
TINY_QWEN2 = {
    **TINY_LLAMA,
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
}

# Phi-3: fused qkv and gate_up projections, LongRoPE (original context 64 of 256).
TINY_PHI3 = {
    **TINY_LLAMA,
    "architectures": ["Phi3ForCausalLM"],
    "model_type": "phi3",
    "num_key_value_heads": 4,
    "original_max_position_embeddings": 64,
    "rope_scaling": {
        "type": "longrope",
        "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 3.1, 3.8],
        "long_factor": [1.0, 1.5, 2.5, 4.0, 6.0, 9.0, 13.0, 18.0],
    },
    "sliding_window": None,
    "pad_token_id": 0,
}

_TINY_IDS = {"vocab_size": 512, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "max_position_embeddings": 256}
_TINY_SHAPE = {**_TINY_IDS, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
               "num_attention_heads": 4}

# Gemma 2: sandwich (1 + w) norms, embedding scale, softcaps small enough to bite on random
# weights, query_pre_attn_scalar != head_dim, a 16-token window on layers 0 and 2.
TINY_GEMMA2 = {
    **_TINY_SHAPE, "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2",
    "num_key_value_heads": 2, "head_dim": 16, "query_pre_attn_scalar": 24, "sliding_window": 16,
    "attn_logit_softcapping": 3.0, "final_logit_softcapping": 5.0, "rms_norm_eps": 1e-6,
    "hidden_activation": "gelu_pytorch_tanh",
}

# Gemma 3: + q/k norms, MQA, head_dim 32 (H*hd != d), local/global rotary bases, 2:1 sliding.
TINY_GEMMA3 = {
    **_TINY_SHAPE, "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
    "num_key_value_heads": 1, "head_dim": 32, "query_pre_attn_scalar": 32, "sliding_window": 16,
    "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
    "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                        "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}},
    "rms_norm_eps": 1e-6,
}

# GPT-NeoX: interleaved fused qkv, 25% rotary (4 of 16 lanes), parallel residual, exact gelu.
TINY_GPT_NEOX = {
    **_TINY_SHAPE, "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox",
    "hidden_act": "gelu", "rotary_pct": 0.25, "rotary_emb_base": 10000, "use_parallel_residual": True,
    "layer_norm_eps": 1e-5, "tie_word_embeddings": False,
}

# GPT-2: Conv1D weights, learned positions, exact gelu (Cerebras-GPT), tied head.
TINY_GPT2 = {
    "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 512, "n_embd": 64,
    "n_layer": 3, "n_head": 4, "n_positions": 256, "activation_function": "gelu",
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "layer_norm_epsilon": 1e-5,
}

# Phi-2: one shared LayerNorm, parallel attention + MLP, 50% rotary, lm_head bias, gelu_new.
TINY_PHI = {
    **_TINY_SHAPE, "architectures": ["PhiForCausalLM"], "model_type": "phi", "num_key_value_heads": 4,
    "hidden_act": "gelu_new", "partial_rotary_factor": 0.5, "layer_norm_eps": 1e-5, "tie_word_embeddings": False,
}

# StableLM: LayerNorms with bias, 25% rotary, q/k/v biases on, gated silu MLP.
TINY_STABLELM = {
    **_TINY_SHAPE, "architectures": ["StableLmForCausalLM"], "model_type": "stablelm", "num_key_value_heads": 2,
    "hidden_act": "silu", "partial_rotary_factor": 0.25, "use_qkv_bias": True, "layer_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}

# The families transformers lacks, in their checkpoints' own config.json schemas; the same
# dicts as tests/reference/*.TINY_CONFIG (a test keeps them equal). Every in_features is a
# multiple of 32, so the int4 schemes' blocks of 32 apply unchanged.

# MiniCPM: every muP scale away from 1 (embedding x12, residual x1.4/sqrt(3), logits / (64/32)),
# GQA 4/2, tied head.
TINY_MINICPM = {
    **{k: TINY_LLAMA[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "bos_token_id", "eos_token_id",
                                  "rope_theta", "hidden_act", "num_attention_heads", "num_key_value_heads")},
    "architectures": ["MiniCPMForCausalLM"], "model_type": "minicpm", "num_hidden_layers": 3,
    "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_scaling": None,
    "scale_emb": 12, "dim_model_base": 32, "scale_depth": 1.4, "tie_word_embeddings": True,
}

# OpenELM: layer-wise scaling, query heads 2/4/4/4, kv heads 1/2/2/2 (MQA then GQA), FFN
# 32/128/192/256; per-head q/k norms; shared embeddings. ffn_multipliers and the head lists
# stored expanded, as the hub's config.json files store them.
TINY_OPENELM = {
    "architectures": ["OpenELMForCausalLM"], "model_type": "openelm", "vocab_size": 512, "max_context_length": 256,
    "num_transformer_layers": 4, "model_dim": 64, "head_dim": 16, "num_gqa_groups": 2,
    "qkv_multipliers": [0.5, 1.0], "ffn_multipliers": [0.5, 1.67, 2.83, 4.0], "ffn_with_glu": True,
    "ffn_dim_divisor": 32, "activation_fn_name": "swish", "normalization_layer_name": "rms_norm",
    "normalize_qk_projections": True, "share_input_output_layers": True, "rope_freq_constant": 10000,
    "rope_max_length": 512, "initializer_range": 0.02, "bos_token_id": 1, "eos_token_id": 2,
    "num_query_heads": [2, 4, 4, 4], "num_kv_heads": [1, 2, 2, 2],
}

# open_lm (DCLM-1B's flat schema): gain-only LayerNorms, QK LayerNorm over the full width,
# fused in_proj and w12, untied head.
TINY_OPEN_LM = {
    "architectures": ["OpenLMForCausalLM"], "model_type": "openlm", "dim": 64, "n_layers": 3, "n_heads": 4,
    "vocab_size": 512, "norm_eps": 1e-5, "seq_len": 256, "post_embed_norm": False, "weight_tying": False,
    "norm_type": "gain_only_lp_layer_norm", "apply_qk_norm": True, "qk_norm": True,
    "positional_embedding_type": "rotary", "ffn_type": "swiglu_torch", "attn_name": "torch_attn",
    "attn_activation": None, "moe_freq": 0,
}

# One tiny config per family, every quirk of that family switched on (tests iterate over it).
TINY_CONFIGS = {
    "llama": TINY_LLAMA, "qwen2": TINY_QWEN2, "phi3": TINY_PHI3, "phi": TINY_PHI, "gemma2": TINY_GEMMA2,
    "gemma3": TINY_GEMMA3, "gpt_neox": TINY_GPT_NEOX, "gpt2": TINY_GPT2, "stablelm": TINY_STABLELM,
    "minicpm": TINY_MINICPM, "openelm": TINY_OPENELM, "open_lm": TINY_OPEN_LM,
}

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


# Marks the config.json of every checkpoint written here: random weights write no text, so
# validation's long-continuation check (validate.measure_continuations) does not apply.
RANDOM_WEIGHTS = "mobilekit_random_weights"

def save_tiny_tokenizer(folder: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        # No byte alphabet: a random model would emit lone UTF-8 continuation bytes, which
        # ExecuTorch's Python runner binding cannot pass to a str callback.
    )
    text = (resources.files("mobilekit") / "data" / "eval.txt").read_text()
    tokenizer.train_from_iterator(text.splitlines() * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )
    # Fill the rest of the embedding rows with plain tokens so every id decodes to text.
    fast.add_tokens([f"<extra_{i}>" for i in range(vocab_size - len(fast))])
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(folder)


def _shapes_without_transformers(config: dict) -> dict | None:
    """{name: shape} of a family transformers cannot build (its Family.checkpoint_shapes), else None."""
    from mobilekit import families

    family = families.for_architecture(config.get("architectures"), config.get("model_type"))
    return family.checkpoint_shapes(config) if family.hf_reference_class is None else None


def _random_tensor(shape, std: float, generator, base_1d: float | None = None) -> torch.Tensor:
    """Matrices N(0, std); 1-D weights around `base_1d` (default: 1 + 0.1 N(0,1) for norms,
    as trained models have, never exactly 1 so a misplaced gain shows)."""
    if len(shape) == 1:
        if base_1d is None:
            return 1.0 + 0.1 * torch.randn(shape, generator=generator)
        return base_1d + std * torch.randn(shape, generator=generator)
    return std * torch.randn(shape, generator=generator)


def make_tiny_checkpoint(folder: Path, config: dict | None = None, seed: int = 0, init_std: float = 0.08,
                         tokenizer: bool = True) -> Path:
    """Write a random-weight HF checkpoint folder of `config` (default: a tiny Llama), with
    the tiny tokenizer unless `tokenizer` is False (OpenELM's real layout has none).

    init_std is larger than HF's 0.02 so that logits are peaked like a trained model's and
    top-1 agreement is a meaningful metric. Families transformers lacks are written from
    their Family.checkpoint_shapes, names and config.json exactly as their hub files."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(config or TINY_LLAMA)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shapes = _shapes_without_transformers(config)
    if shapes is not None:
        generator = torch.Generator().manual_seed(seed)
        state = {name: _random_tensor(shape, init_std, generator) for name, shape in shapes.items()}
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps({**config, RANDOM_WEIGHTS: True}, indent=2))
        if tokenizer:
            save_tiny_tokenizer(folder, config.get("vocab_size") or config["params_args_dict"]["vocab_size"])
        return folder
    hf_config = AutoConfig.for_model(**{**config, "initializer_range": init_std})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    with torch.no_grad():
        # HF initializes norms to 1 (Gemma's offsets to 0) and biases to 0, where a wrong
        # mapping would not show: give every 1-D weight random values too.
        for param in model.parameters():
            if param.ndim == 1:
                param.add_(torch.randn_like(param) * 0.1)
    model.save_pretrained(folder)
    if tokenizer:
        save_tiny_tokenizer(folder, config["vocab_size"])
    cfg = json.loads((folder / "config.json").read_text())
    if "architectures" in config:
        cfg["architectures"] = config["architectures"]
    else:  # as Cerebras-GPT-2.7B's config.json: the family comes from model_type
        cfg.pop("architectures", None)
    (folder / "config.json").write_text(json.dumps({**cfg, RANDOM_WEIGHTS: True}, indent=2))
    return folder


def make_random_checkpoint(folder: Path, config: dict, dtype: torch.dtype = torch.bfloat16,
                           shard_bytes: int = 4_000_000_000, std: float = 0.02, seed: int = 0) -> Path:
    """A random-weight checkpoint of a real model's size, in the hub's layout (safetensors
    shards of `shard_bytes` in `dtype`, an index, config.json, a small BPE tokenizer), written
    tensor by tensor: memory stays at one tensor however large the model. For measuring
    exports of 7B+ models (peak memory, time) without downloading them; numbers it yields
    about quality are meaningless."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shapes = _shapes_without_transformers(config)
    hf_config = None
    if shapes is None:
        hf_config = AutoConfig.for_model(**config)
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in AutoModelForCausalLM.from_config(hf_config).state_dict().items()}
        if hf_config.tie_word_embeddings:
            shapes.pop("lm_head.weight", None)
    shapes = {k: torch.Size(v) for k, v in shapes.items()}
    generator = torch.Generator().manual_seed(seed)
    shards: list[dict] = [{}]
    size = 0
    for name, shape in shapes.items():
        n = shape.numel() * torch.finfo(dtype).bits // 8
        if shards[-1] and size + n > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = shape
        size += n
    weight_map = {}
    for i, names in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name, shape in names.items():
            # norms and biases: near 1 / near 0 as trained models have
            base = 1.0 if "norm" in name else 0.0
            tensors[name] = _random_tensor(shape, std, generator, base).to(dtype)
            weight_map[name] = file
        save_file(tensors, folder / file, metadata={"format": "pt"})
        del tensors
    total = sum(s.numel() * torch.finfo(dtype).bits // 8 for s in shapes.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    if hf_config is not None:
        hf_config.save_pretrained(folder)
        cfg = json.loads((folder / "config.json").read_text())
    else:
        cfg = dict(config)
    cfg["architectures"], cfg["torch_dtype"] = config["architectures"], str(dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps({**cfg, RANDOM_WEIGHTS: True}, indent=2))
    save_tiny_tokenizer(folder, 512)
    return folder


# --- a recipe's architecture at tiny size (`mobilekit matrix --checkpoint-mode tiny`) ---------

TINY_SEQ_LEN = 128  # past every tiny sliding window (16), within every tiny context
# Random weights give flat logits whose top-1 flips under any 4-bit noise: the same tiny
# StableLM scores 0.43-0.64 top-1 under ExecuTorch int4 across seeds 0-3, and the same
# quantized model run eagerly scores the same. The 0.45 gate is for trained models (SmolLM2,
# e2e tests); on tiny models int4 top-1 must stay above 0.35, every other bound unchanged
# (0.40 until issue 21's 4-bit ExecuTorch embedding: one tiny family measured 0.375).
TINY_BUDGETS = {"int4": {"min_top1_agreement": 0.35}}
_TINY_IDS_ONLY = {"vocab_size": 512, "bos_token_id": 1, "pad_token_id": 0}


def recipe_tiny_config(recipe) -> dict:
    """The recipe's stored config.json ([config]) with only its sizes shrunk: every switch
    that selects a code path (activation, norms, biases, tying, partial rotary, rope scaling
    type, softcaps, sliding windows, GQA vs MQA vs MHA, head_dim != hidden/heads, MiniCPM's
    scales, OpenELM's layer-wise scaling) stays the recipe's own. Ids fit the 512-token tiny
    tokenizer; the eos keeps its shape (Llama 3.1 lists several)."""
    config = dict(recipe.config)
    eos = config.get("eos_token_id")
    config.update(_TINY_IDS_ONLY, eos_token_id=[2, 3] if isinstance(eos, list) else 2)
    return _TINY_SHRINKERS.get(recipe.family, _shrink_transformers_layout)(config)


def _shrink_transformers_layout(config: dict) -> dict:
    heads = config.get("num_attention_heads", 4)
    kv_heads = config.get("num_key_value_heads") or heads
    hidden = config["hidden_size"]
    # a head_dim that differs from hidden/heads (Gemma, Mistral Nemo) stays different
    odd_head_dim = "head_dim" in config and config["head_dim"] * heads != hidden
    head_dim = 32 if odd_head_dim else 16
    tiny = {
        **config, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": max(1, 4 * kv_heads // heads), "max_position_embeddings": 256,
        # Gemma 3: at least one global layer among the sliding ones
        "num_hidden_layers": max(3, config.get("sliding_window_pattern") or (6 if config["model_type"] == "gemma3_text" else 3)),
    }
    if "head_dim" in config:
        tiny["head_dim"] = head_dim
    if config.get("sliding_window"):
        tiny["sliding_window"] = 16
    if config.get("query_pre_attn_scalar"):  # Gemma: the same ratio to head_dim
        tiny["query_pre_attn_scalar"] = config["query_pre_attn_scalar"] * head_dim // config.get("head_dim", hidden // heads)
    if config.get("dim_model_base"):  # MiniCPM's muP width ratio, not 1
        tiny["dim_model_base"] = 32
    if config.get("original_max_position_embeddings"):  # Phi-3 LongRoPE: long factors apply past 64
        tiny["original_max_position_embeddings"] = 64
    scaling = config.get("rope_scaling")
    if isinstance(scaling, dict) and scaling.get("original_max_position_embeddings"):  # Llama 3.1's remap
        scaling = tiny["rope_scaling"] = {**scaling, "original_max_position_embeddings": 64}
    if isinstance(scaling, dict) and "long_factor" in scaling:
        # one factor per rotary frequency: resample to the tiny head's head_dim / 2
        step = len(scaling["long_factor"]) / (head_dim // 2)
        tiny["rope_scaling"] = {**scaling, **{key: [scaling[key][int(i * step)] for i in range(head_dim // 2)]
                                              for key in ("long_factor", "short_factor")}}
    return tiny


def _shrink_gpt2(config: dict) -> dict:
    return {**config, "n_embd": 64, "n_layer": 3, "n_head": 4, "n_positions": 256,
            "n_inner": None if config.get("n_inner") is None else 256}


def _shrink_openelm(config: dict) -> dict:
    sizes = ("num_transformer_layers", "model_dim", "head_dim", "num_gqa_groups", "qkv_multipliers", "ffn_multipliers",
             "ffn_dim_divisor", "num_query_heads", "num_kv_heads", "max_context_length", "rope_max_length")
    return {**config, **{key: TINY_OPENELM[key] for key in sizes}}


def _shrink_open_lm(config: dict) -> dict:
    return {**config, **{key: TINY_OPEN_LM[key] for key in ("dim", "n_layers", "n_heads", "seq_len")}}


_TINY_SHRINKERS = {"gpt2": _shrink_gpt2, "openelm": _shrink_openelm, "open_lm": _shrink_open_lm}
