"""Family registry: one module per architecture family, claimed by HF `architectures` strings.

A family maps a checkpoint's config to a DecoderSpec and its weight names to the
decoder's, and nothing else.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from mobilekit.errors import UnknownNameError, UnsupportedArchitectureError
from mobilekit.modeling.spec import DecoderSpec

# Registry key = module stem. Kept as a literal list so nothing heavy is imported until asked.
FAMILY_MODULES = ("llama", "phi3", "qwen2")


@dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]
    spec_from_config: Callable[[Mapping], DecoderSpec]
    convert_weights: Callable[[Mapping[str, torch.Tensor], DecoderSpec], dict[str, torch.Tensor]]
    # Builds the transformers reference model from a config dict, or None when
    # transformers has no implementation of the family.
    hf_reference_class: str | None = None


def names() -> list[str]:
    return list(FAMILY_MODULES)


def get(name: str) -> Family:
    if name not in FAMILY_MODULES:
        raise UnknownNameError("family", name, names())
    return importlib.import_module(f"mobilekit.families.{name}").FAMILY


def supported_architectures() -> dict[str, str]:
    return {arch: fam.name for fam in map(get, names()) for arch in fam.architectures}


def for_architecture(architectures: list[str] | None) -> Family:
    table = supported_architectures()
    for arch in architectures or []:
        if arch in table:
            return get(table[arch])
    raise UnsupportedArchitectureError(
        f"No mobilekit family supports architectures {architectures}. "
        f"Supported: {', '.join(sorted(table))}"
    )
