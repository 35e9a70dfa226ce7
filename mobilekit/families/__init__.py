"""Family registry: one module per architecture family, claimed by HF `architectures` strings.

A family maps a checkpoint's config to a DecoderSpec and its weight names to the
decoder's, and nothing else. Each family module ends with one `register(Family(...))` call
carrying every fact about it; the registry is whatever those calls add, found by importing
every module of this package (`_helpers` with a leading underscore are skipped). So a new
family is one new module here (plus its recipes): nothing else lists families.

Nothing here or in a family module imports torch at import time: `mobilekit list`, `info`
and recipe checks read the registry without it. Family modules import torch inside the
functions that compute with tensors.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping

from mobilekit.errors import CheckpointError, UnknownNameError, UnsupportedArchitectureError

if TYPE_CHECKING:
    import torch

    from mobilekit.modeling.spec import DecoderSpec


@dataclass(frozen=True, eq=False)
class Family:
    """Every per-family fact. Registry key = `name` = the module's file stem = CLI value."""

    name: str
    # HF config.json `architectures` strings the family claims
    architectures: tuple[str, ...]
    spec_from_config: Callable[[Mapping], DecoderSpec]
    convert_weights: Callable[[Mapping[str, torch.Tensor], DecoderSpec], dict[str, torch.Tensor]]
    # A tiny config.json of the family, every quirk switched on (mobilekit.tiny builds random
    # checkpoints of it; tests/families run every family on it).
    tiny_config: Mapping
    # A recipe's real config.json -> the same architecture at tiny size (mobilekit.tiny.
    # recipe_tiny_config, `matrix --checkpoint-mode tiny`). None: the families' shared
    # shrinker for transformers-style keys (hidden_size, num_hidden_layers, ...).
    shrink_to_tiny: Callable[[dict], dict] | None = None
    # Builds the transformers reference model from a config dict, or None when
    # transformers has no implementation of the family (then tests/reference/<name>.py is
    # its independent eager reference, and exports compare against the decoder itself).
    hf_reference_class: str | None = None
    # model_type values claimed when a config.json has no `architectures` (Cerebras-GPT-2.7B)
    model_types: tuple[str, ...] = ()
    # GGUF `general.architecture` -> the HF architecture transformers' GGUF loader builds from it
    gguf_architectures: Mapping[str, str] = field(default_factory=dict)
    # Families transformers lacks: {weight name: shape} exactly as the checkpoints store them,
    # from a config.json (what mobilekit.tiny randomizes, since transformers cannot build them).
    checkpoint_shapes: Callable[[Mapping], dict[str, tuple[int, ...]]] | None = None
    # Said when a checkpoint folder has no tokenizer (OpenELM's repos ship none).
    tokenizer_hint: str = ""
    # Validation budgets of this family's random-weight tiny models where they differ from
    # mobilekit.tiny.TINY_BUDGETS ({scheme: {budget field: bound}}), each with the
    # measurement that sets it in a comment: tiny models check lowering, and some
    # architectures' random weights are more fragile under 4 bits than others'.
    tiny_budgets: Mapping = field(default_factory=dict)


_REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add `family` to the registry (called once, at the end of its module). An architecture,
    model_type or GGUF name claimed by two families is refused: lookups would depend on order."""
    if family.name in _REGISTRY:
        raise ValueError(f"family {family.name!r} is registered twice")
    for other in _REGISTRY.values():
        for what in ("architectures", "model_types", "gguf_architectures"):
            shared = set(getattr(family, what)) & set(getattr(other, what))
            if shared:
                raise ValueError(f"families {other.name!r} and {family.name!r} both claim {what} {sorted(shared)}")
    _REGISTRY[family.name] = family
    return family


@functools.cache
def _registry() -> dict[str, Family]:
    """Import every family module of the package (each registers itself on first import).
    Once: listing the package folder on every lookup cost milliseconds each, and the config
    parser looks families up thousands of times under the fuzz tests."""
    for module in pkgutil.iter_modules(__path__):
        if module.name.startswith("_"):
            continue
        importlib.import_module(f"{__name__}.{module.name}")
        if module.name not in _REGISTRY:
            raise ValueError(f"mobilekit/families/{module.name}.py registers no family named {module.name!r} "
                             "(the registry key is the module's file stem)")
    return _REGISTRY


def names() -> list[str]:
    """Every family, sorted (the CLI's choices and tables list them in this order)."""
    return sorted(_registry())


def get(name: str) -> Family:
    registry = _registry()
    if name not in registry:
        raise UnknownNameError("family", name, names())
    return registry[name]


def all_families() -> list[Family]:
    return [get(name) for name in names()]


def supported_architectures() -> dict[str, str]:
    return {arch: fam.name for fam in all_families() for arch in fam.architectures}


def for_architecture(architectures: list[str] | None, model_type: str | None = None) -> Family:
    table = supported_architectures()
    for arch in architectures or []:
        if arch in table:
            return get(table[arch])
    if not architectures and model_type:
        for family in all_families():
            if model_type in family.model_types:
                return family
    raise UnsupportedArchitectureError(
        f"No mobilekit family supports architectures {architectures}. "
        f"Supported: {', '.join(sorted(table))}"
    )


def gguf_architectures() -> dict[str, str]:
    """{GGUF `general.architecture`: the HF architecture transformers builds from it}, sorted."""
    return dict(sorted((gguf, hf) for fam in all_families() for gguf, hf in fam.gguf_architectures.items()))


def hf_config(config: Mapping) -> dict:
    """The config as transformers itself reads it: legacy keys (rope_theta, rotary_pct,
    rope_local_base_freq, missing layer_types ...) folded into the current ones
    (ARCHITECTURES.md §0.5). Reads no weights and runs no remote code."""
    from transformers import AutoConfig

    values = {k: v for k, v in config.items() if k not in ("model_type", "transformers_version")}
    try:
        return AutoConfig.for_model(config["model_type"], **values).to_dict()
    except KeyError:
        raise
    except Exception as e:  # transformers' strict config dataclasses: a value of the wrong type
        detail = (str(e).strip().splitlines() or [type(e).__name__])[-1].strip()[:300]
        raise CheckpointError(f"transformers' {config['model_type']!r} config refuses a value ({detail})") from e


def core_shape(config: Mapping) -> dict:
    """The DecoderSpec sizes every transformers-style config spells the same way (GPT-2's
    n_embd/n_head keys are its own). head_dim defaults to hidden/heads, kv heads to heads."""
    heads = config["num_attention_heads"]
    return dict(
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        intermediate_size=config["intermediate_size"],
        max_position_embeddings=config.get("max_position_embeddings", 2048),
    )


def layer_norm_rotary_fields(config: Mapping, family: str) -> dict:
    """The DecoderSpec fields GPT-NeoX, Phi-2 and StableLM read alike from a normalized
    config: sizes, LayerNorm eps, activation, plain rotary base and partial rotary width."""
    params = rope_parameters(config)
    require_default_rope(params, family)
    shape = core_shape(config)
    return dict(
        **shape,
        norm="layer",
        norm_eps=config["layer_norm_eps"],
        activation=activation(config["hidden_act"]),
        rope_theta=float(params.get("rope_theta", 10000.0)),
        rotary_dim=rotary_dim(config, shape["head_dim"]),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


def rope_parameters(config: Mapping, layer_type: str | None = None) -> dict:
    """rope_parameters of a normalized config (per layer type where the family has them)."""
    params = config.get("rope_parameters") or {}
    if layer_type is not None and layer_type in params:
        params = params[layer_type]
    return params


def rotary_dim(config: Mapping, head_dim: int) -> int:
    """Rotated lanes per head: int(head_dim * partial_rotary_factor), as transformers does."""
    return int(head_dim * float(rope_parameters(config).get("partial_rotary_factor", 1.0)))


def require_default_rope(params: Mapping, family: str) -> None:
    kind = params.get("rope_type", "default")
    if kind != "default":
        raise CheckpointError(f"{family} checkpoints with rope scaling {kind!r} are not supported (supported: none)")


HF_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
                  "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}


def activation(name: str) -> str:
    if name not in HF_ACTIVATIONS:
        raise CheckpointError(f"activation {name!r} is not supported (supported: {', '.join(HF_ACTIVATIONS)})")
    return HF_ACTIVATIONS[name]


_LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


def layer_index(name: str) -> int:
    """The decoder layer a checkpoint weight name belongs to (`...layers.{i}....`)."""
    m = _LAYER_INDEX.search(name)
    if m is None:
        raise CheckpointError(f"weight {name!r} names no layer")
    return int(m.group(1))


def rename(name: str, prefixes: tuple[str, ...], renames: Mapping[str, str]) -> str:
    """Strip the first matching prefix, then replace each dotted component in `renames`."""
    for prefix in prefixes:
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    return ".".join(renames.get(part, part) for part in name.split("."))
