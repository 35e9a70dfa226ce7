"""A checkpoint's config.json: reading it, and the DecoderSpec it describes through its
family. Apart from mobilekit.checkpoint (weights, tokenizers, GGUF; torch) so that recipes
(their stored [config]) and `mobilekit info` resolve specs with the families alone."""

from __future__ import annotations

import json
from pathlib import Path

from mobilekit import families
from mobilekit.errors import CheckpointError, UnsupportedArchitectureError
from mobilekit.modeling.spec import DecoderSpec


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines() or [type(error).__name__])[0][:300]


def check_json_file(path: Path) -> None:
    """A JSON file of a checkpoint (config, tokenizer) that exists must parse: the message
    names the file and the place, where the loader's own error would not."""
    if not path.is_file():
        return
    try:
        json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, a 5000-digit number
        where = f" (line {e.lineno}, column {e.colno}: {e.msg})" if isinstance(e, json.JSONDecodeError) else ""
        raise CheckpointError(f"{path} is not valid JSON{where}; re-download it or repair the file") from e
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({e.strerror or e})") from e


def read_config(folder: Path) -> dict:
    """A checkpoint's config.json as a dict, or a CheckpointError naming the file and fault."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a Hugging Face checkpoint folder: it has no config.json")
    check_json_file(path)
    config = json.loads(path.read_bytes())
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object of settings, not a {type(config).__name__}")
    if config.get("quantization_config"):
        method = config["quantization_config"]
        method = method.get("quant_method", "?") if isinstance(method, dict) else method
        raise CheckpointError(f"{path} describes a pre-quantized checkpoint (quantization_config: {method!r}); "
                              "mobilekit quantizes itself and needs the original floating-point weights")
    return config


# Sizes a transformers-style config.json spells alike; each must be a positive whole number,
# within bounds no real model comes near (so a typo cannot build a decoder of 10^12 weights).
CONFIG_SIZES = {
    "vocab_size": 1 << 22, "hidden_size": 1 << 17, "num_hidden_layers": 1024, "num_attention_heads": 1024,
    "num_key_value_heads": 1024, "head_dim": 4096, "intermediate_size": 1 << 19, "max_position_embeddings": 1 << 24,
    "n_embd": 1 << 17, "n_layer": 1024, "n_head": 1024, "n_positions": 1 << 24, "n_inner": 1 << 19,
}


def family_of(config: dict, where: Path | str) -> families.Family:
    """The family claiming a config's `architectures` (or its model_type)."""
    architectures = config.get("architectures")
    if architectures is not None and not (
            isinstance(architectures, list) and all(isinstance(a, str) for a in architectures)):
        raise CheckpointError(f"{where}: architectures must be a list of class names, e.g. [\"LlamaForCausalLM\"]; "
                              f"got {architectures!r}")
    model_type = config.get("model_type")
    try:
        return families.for_architecture(architectures, model_type if isinstance(model_type, str) else None)
    except UnsupportedArchitectureError as e:
        raise UnsupportedArchitectureError(f"{where}: {e}") from e


def spec_from_config(config: dict, where: Path | str) -> DecoderSpec:
    """The DecoderSpec a config.json describes, or a CheckpointError naming `where` and the
    key at fault (sizes are checked before any family reads them)."""
    problems = []
    for key, bound in CONFIG_SIZES.items():
        value = config.get(key)
        if value is None:
            continue
        # Gemma 3n lists intermediate_size per layer
        values = value if key == "intermediate_size" and isinstance(value, list) and value else [value]
        if any(isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= bound for v in values):
            problems.append(f"{key} = {value!r} (must be a whole number from 1 to {bound}"
                            + (", or a list of them" if key == "intermediate_size" else "") + ")")
    if problems:
        raise CheckpointError(f"{where} has invalid sizes: {'; '.join(problems)}. Fix config.json; it must describe "
                              "the checkpoint's weights.")
    family = family_of(config, where)
    try:
        return family.spec_from_config(config)
    except CheckpointError as e:
        raise CheckpointError(f"{where}: {e}") from e
    except KeyError as e:
        raise CheckpointError(f"{where} lacks the key {e} that a {family.name} config needs; "
                              "is it a complete config.json?") from e
    except (TypeError, ValueError, AttributeError, ZeroDivisionError, OverflowError, IndexError) as e:
        # a value of the wrong kind somewhere (a string for a number, a list for a table ...)
        raise CheckpointError(f"{where} has a value mobilekit cannot read as a {family.name} config "
                              f"({type(e).__name__}: {first_line(e)}); compare it with the model's published "
                              "config.json") from e

