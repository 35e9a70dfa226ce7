"""Tiny random checkpoints of a real architecture, built locally (no hub): for tests and
for `--checkpoint-mode tiny` runs. Weights are seeded; the tokenizer is a real byte-level
BPE trained on mobilekit's bundled text, with ChatML special tokens and chat template."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch

from mobilekit import families
from mobilekit.families import llama
from mobilekit.families._tiny import shrink_transformers_layout

# Each family's tiny config is its Family.tiny_config (every quirk of the family switched on;
# tests iterate over families.names()). A tiny Llama is the default tiny model.
TINY_LLAMA = llama.TINY_CONFIG

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


def tiny_budgets(family: str) -> dict:
    """TINY_BUDGETS with the family's own tiny-model bounds (Family.tiny_budgets) over them."""
    own = families.get(family).tiny_budgets
    return {scheme: {**TINY_BUDGETS.get(scheme, {}), **own.get(scheme, {})} for scheme in {*TINY_BUDGETS, *own}}
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
    shrink = families.get(recipe.family).shrink_to_tiny or shrink_transformers_layout
    return shrink(config)
