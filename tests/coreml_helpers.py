"""Test-only Core ML helpers: the package's weights read back into a Decoder, the DecoderSpec
stored in a manifest, and the converted torch module run eagerly. None of this ships: apps
and mobilekit's runtime never need it."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from mobilekit.errors import BundleError, CheckpointError, ValidationFailed
from mobilekit.formats.coreml import (causal_mask, load_program, read_folded_metadata, read_identity_metadata,
                                      read_shared_metadata)
from mobilekit.lowering.coreml import (CoreMLDecoder, apply_fp16_safe_norms, identity_value, map_weights, materialize,
                                       unfold, weight_ops)
from mobilekit.modeling import Decoder, DecoderSpec
from mobilekit.runtime import Session


def spec_from_manifest(manifest: dict) -> DecoderSpec:
    """The DecoderSpec stored in the manifest as dataclasses.asdict(DecoderSpec)."""
    stored = manifest.get("decoder_spec")
    if not isinstance(stored, dict):
        raise BundleError(
            "the manifest has no decoder_spec; re-export the bundle with this mobilekit version"
        )
    try:
        return DecoderSpec.from_dict(stored)
    except CheckpointError as e:
        raise BundleError(f"the manifest's {e}; upgrade mobilekit or re-export the bundle") from e


# --- weights: MIL program -> decoder state_dict ------------------------------------------


def roundtrip_decoder(path: Path, spec: DecoderSpec) -> tuple[Decoder, dict]:
    """A fresh Decoder holding the weights stored in the package at `path`.

    Raises ValidationFailed if any decoder weight has no counterpart in the package other
    than those the export recorded: weights at their identity value (ones, or zeros for a
    bias) folded away by the converter, weights sharing another's deduplicated const, and
    weights stored as a const of their transform (read back through its inverse)."""
    program, spec_pb = load_program(path)
    with torch.device("meta"):
        decoder = Decoder(spec)
    sources, missing = map_weights(program, decoder)
    identity = set(read_identity_metadata(spec_pb))
    shared = {k: v for k, v in read_shared_metadata(spec_pb).items() if k in missing and v in sources}
    consts = weight_ops(program)
    folded = {k: consts[v] for k, v in read_folded_metadata(spec_pb).items() if k in missing and v in consts}
    unexplained = [k for k in missing if k not in identity and k not in shared and k not in folded]
    if unexplained:
        raise ValidationFailed(
            f"{path} holds no weight for decoder parameters {unexplained}: the package is incomplete "
            "or was not exported by mobilekit's Core ML target for this decoder spec"
        )
    for key, other in shared.items():
        sources[key] = sources[other]
    state = decoder.state_dict(keep_vars=True)
    weights: dict[str, torch.Tensor] = {}
    cache: dict[int, torch.Tensor] = {}
    storage: dict[str, int] = {}
    for key in state:
        if key in sources:
            op = sources[key]
            if id(op) not in cache:
                cache[id(op)] = torch.from_numpy(materialize(op).astype(np.float32))
            weights[key] = cache[id(op)]
            storage[op.op_type] = storage.get(op.op_type, 0) + 1
        elif key in folded:
            weights[key] = torch.from_numpy(unfold(key, materialize(folded[key])))
        else:
            weights[key] = torch.full(state[key].shape, identity_value(key))
    decoder.load_state_dict(weights, strict=True, assign=True)
    if spec.tie_word_embeddings:
        decoder.lm_head.weight = decoder.embed_tokens.weight
    report = {
        "mapped": {k: sources[k].name for k in sources},
        "identity": sorted(identity & set(missing)),
        "shared": dict(sorted(shared.items())),
        "folded": {k: op.name for k, op in sorted(folded.items())},
        "storage_ops": storage,
    }
    return decoder.eval().requires_grad_(False), report


class WrapperSession(Session):
    """The torch module that is converted (CoreMLDecoder: fp16 state buffers, positions read
    from the mask's shape, slice-updated cache), run eagerly on the inputs Core ML receives.

    fp32 checks the wrapper's cache, position, sliding-window and softcap logic, which
    nothing else executes on Linux; `cache_dtype=torch.float32` (not what Core ML does: its
    states are fp16) takes the fp16 rounding of cached k/v out, so that logic can be checked
    to fp32 precision. fp16 (with the fp16-safe norms the export uses) approximates Core
    ML's fp16 compute with torch's CPU kernels; it is an estimate, not Core ML's arithmetic."""

    def __init__(self, decoder: Decoder, max_seq_len: int, dtype: torch.dtype = torch.float32,
                 cache_dtype: torch.dtype = torch.float16):
        super().__init__(max_seq_len)
        decoder = copy.deepcopy(decoder)
        if dtype == torch.float16:
            apply_fp16_safe_norms(decoder)
        self.module = CoreMLDecoder(decoder, max_seq_len).to(dtype).eval()
        for name in self.module.state_names:  # Core ML states are fp16 whatever the compute
            setattr(self.module, name, getattr(self.module, name).to(cache_dtype))
        self.dtype = dtype
        self.runtime = f"Core ML wrapper module, torch eager ({str(dtype).removeprefix('torch.')})"

    @torch.no_grad()
    def _run(self, tokens):
        end = self.position + len(tokens)
        mask = torch.from_numpy(causal_mask(len(tokens), end).astype(np.float32)).to(self.dtype)
        logits = self.module(torch.tensor([tokens], dtype=torch.int32), mask)
        return logits[0, -1].float().numpy()
