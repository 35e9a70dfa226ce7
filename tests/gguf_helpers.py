"""Tiny GGUF files for tests: a tiny HF checkpoint written as llama.cpp lays a GGUF out."""

import json
from pathlib import Path

import numpy as np
import torch


def write_gguf(hf_folder: Path, path: Path, arch: str, key_length: bool = True) -> dict:
    """The tiny HF checkpoint at `hf_folder` as an fp32 GGUF of architecture `arch`, laid out
    as llama.cpp's converter writes one: tensor names from the gguf package's own name map,
    metadata keys from transformers' GGUF config mapping, a gpt2-style tokenizer. Without
    `key_length`, the head_dim a config spells out is left out. Returns the state dict (HF names)."""
    import gguf
    from transformers import AutoModelForCausalLM
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    model = AutoModelForCausalLM.from_pretrained(hf_folder, dtype=torch.float32)
    config = json.loads((hf_folder / "config.json").read_text())
    writer = gguf.GGUFWriter(str(path), arch)
    for key, hf_key in GGUF_CONFIG_MAPPING[arch].items():
        value = config.get(hf_key) if hf_key else None
        if isinstance(value, bool) or value is None:
            continue
        (writer.add_uint32 if isinstance(value, int) else writer.add_float32)(f"{arch}.{key}", value)
    if key_length and "head_dim" in config:  # llama.cpp writes it as the key length
        writer.add_uint32(f"{arch}.attention.key_length", config["head_dim"])
        writer.add_uint32(f"{arch}.attention.value_length", config["head_dim"])

    tokenizer = json.loads((hf_folder / "tokenizer.json").read_text())
    vocab = tokenizer["model"]
    tokens = sorted(vocab["vocab"], key=vocab["vocab"].get)
    by_id = {t["id"]: t["content"] for t in tokenizer["added_tokens"]}
    tokens = [by_id.get(i, tokens[i] if i < len(tokens) else f"<extra_{i}>") for i in range(config["vocab_size"])]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i in by_id else 1 for i in range(len(tokens))])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in vocab["merges"]])
    special = json.loads((hf_folder / "tokenizer_config.json").read_text())
    ids = {t: i for i, t in enumerate(tokens)}
    writer.add_bos_token_id(ids[special["bos_token"]])
    writer.add_eos_token_id(ids[special["eos_token"]])

    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.get_tensor_name_map(arch_id, config["num_hidden_layers"])
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name, tensor in state.items():
        if name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), tensor.numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return state
