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

# One tiny config per family, every quirk of that family switched on (tests iterate over it).
TINY_CONFIGS = {
    "llama": TINY_LLAMA, "qwen2": TINY_QWEN2, "phi3": TINY_PHI3, "phi": TINY_PHI, "gemma2": TINY_GEMMA2,
    "gemma3": TINY_GEMMA3, "gpt_neox": TINY_GPT_NEOX, "gpt2": TINY_GPT2, "stablelm": TINY_STABLELM,
}

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


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


def make_tiny_checkpoint(folder: Path, config: dict | None = None, seed: int = 0, init_std: float = 0.08) -> Path:
    """Write a random-weight HF checkpoint folder of `config` (default: a tiny Llama).

    init_std is larger than HF's 0.02 so that logits are peaked like a trained model's and
    top-1 agreement is a meaningful metric."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(config or TINY_LLAMA)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
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
    save_tiny_tokenizer(folder, config["vocab_size"])
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = config["architectures"]
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
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
    hf_config = AutoConfig.for_model(**config)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in AutoModelForCausalLM.from_config(hf_config).state_dict().items()}
    if hf_config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
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
            if len(shape) == 1:  # norms and biases: near 1 / near 0 as trained models have
                base = 1.0 if "norm" in name else 0.0
                tensors[name] = (base + std * torch.randn(shape, generator=generator)).to(dtype)
            else:
                tensors[name] = (std * torch.randn(shape, generator=generator)).to(dtype)
            weight_map[name] = file
        save_file(tensors, folder / file, metadata={"format": "pt"})
        del tensors
    total = sum(s.numel() * torch.finfo(dtype).bits // 8 for s in shapes.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    hf_config.save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"], cfg["torch_dtype"] = config["architectures"], str(dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    save_tiny_tokenizer(folder, 512)
    return folder
