"""Core ML from Python.

macOS: `CoreMLSession` runs the real stateful MLModel (make_state, then predict with
inputIds + causalMask, prefill then decode), and `coreml_generate` generates greedily with
the bundle's tokenizer.

Linux (no Core ML runtime; coremltools' wheel lacks libcoremlpython): `EvaluatorSession`
runs the saved package's MIL program op by op through `mobilekit.runtime.mil_evaluator`,
with its states held between calls as Core ML holds them: the stage-2 runtime of a Core ML
bundle there, and what `generate` runs. It executes the converted graph in numpy; it is not
Core ML, and its fp16 arithmetic estimates the device's (see that module).

Also here: the weight round-trip (`map_weights`, `roundtrip_decoder`: the package's stored
weights, dequantized from constexpr ops where quantized, mapped onto the decoder's parameter
names and loaded into a fresh `mobilekit.modeling.Decoder`), which the export uses to record
weights the converter folded away or merged and the tests use to check what a package
stores; and `WrapperSession`, the converted torch module run eagerly.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from mobilekit.errors import BundleError, CheckpointError, ExportError, ValidationFailed
from mobilekit.formats.coreml import (CAUSAL_MASK, INPUT_IDS, KEY_CACHE, LOGITS, MODEL_FILE, VALUE_CACHE, causal_mask,
                                      compute_units_from_manifest, load_program, read_identity_metadata,
                                      read_shared_metadata)
from mobilekit.lowering.coreml import CoreMLDecoder, apply_fp16_safe_norms
from mobilekit.modeling import Decoder, DecoderSpec
from mobilekit.runtime import GenerationResult, Session
from mobilekit.runtime.mil_evaluator import load_evaluator

COREML_RUNTIME = "Core ML (MLModel.predict, stateful)"
EVALUATOR_RUNTIME = "mobilekit Core ML evaluator (MIL program in numpy, not Core ML)"

# Suffixes coremltools appends to a weight's name as passes rewrite it (fp16 cast,
# compression); stripped to recover the torch.export placeholder name p_decoder_<key>.
WEIGHT_NAME_SUFFIXES = ("_to_fp16", "_to_fp32", "_quantized", "_palettized", "_sparsified", "_dequantized")
PARAM_PREFIX = "p_decoder_"
# constexpr ops that turn stored data into a weight (iOS 16 and iOS 18 opsets)
DEQUANTIZING_OPS = (
    "constexpr_blockwise_shift_scale",
    "constexpr_lut_to_dense",
    "constexpr_affine_dequantize",
    "constexpr_sparse_to_dense",
)




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


def _base_name(name: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for suffix in WEIGHT_NAME_SUFFIXES:
            if name.endswith(suffix):
                name, stripped = name[: -len(suffix)], True
    return name


def param_name(key: str) -> str:
    """The torch.export placeholder name of decoder weight `key` inside CoreMLDecoder."""
    return PARAM_PREFIX + key.replace(".", "_")


def _consumers(op):
    return [c for out in op.outputs for c in out.child_ops]


def weight_ops(program) -> dict:
    """name -> op for every op that yields a weight tensor a compute op reads: float consts
    and dequantizing constexpr ops (their data/scale consts are not listed)."""
    from coremltools.converters.mil.mil import types

    found = {}
    for op in program.functions["main"].operations:
        if op.op_type in DEQUANTIZING_OPS:
            found[op.name] = op
        elif op.op_type == "const":
            out = op.outputs[0]
            if out.rank >= 1 and types.is_float(out.dtype) and any(
                not c.op_type.startswith("constexpr_") for c in _consumers(op)
            ):
                found[op.name] = op
    return found


def _tied_groups(decoder: Decoder) -> list[list[str]]:
    """state_dict keys grouped by the parameter they name (tied embeddings share one)."""
    groups: dict[int, list[str]] = {}
    for key, tensor in decoder.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(key)
    return list(groups.values())


def _shape(decoder: Decoder, key: str) -> tuple[int, ...]:
    return tuple(decoder.state_dict(keep_vars=True)[key].shape)


def map_weights(program, decoder: Decoder) -> tuple[dict[str, object], list[str]]:
    """Map decoder state_dict keys to the MIL ops that hold their values.

    By name first (coremltools keeps torch.export's `p_decoder_<key>` and appends pass
    suffixes); then, for keys still unresolved, linear weights by the order of `linear`
    ops in the graph and the embeddings by the one `gather` over a table of their shape,
    each checked by shape; then a linear's bias by the bias input of the `linear` op its
    weight was found in (which also finds a bias that coremltools' const deduplication
    merged into an identical one). Returns (key -> op, keys with no op)."""
    ops = weight_ops(program)
    by_base: dict[str, object] = {}
    for name, op in ops.items():
        by_base.setdefault(_base_name(name), op)
    state = decoder.state_dict(keep_vars=True)
    sources: dict[str, object] = {}
    unresolved: list[list[str]] = []
    for group in _tied_groups(decoder):
        op = next((by_base[param_name(k)] for k in group if param_name(k) in by_base), None)
        if op is None:
            unresolved.append(group)
            continue
        for k in group:
            sources[k] = op

    def assign(key, op):
        for g in unresolved:
            if key in g:
                for kk in g:
                    sources[kk] = op

    main = program.functions["main"]
    claimed = {id(op) for op in sources.values()}
    linear_modules = [n for n, m in decoder.named_modules() if isinstance(m, nn.Linear)]
    if unresolved:
        # linear weights in execution order (module registration order is forward order)
        pending = {k for g in unresolved for k in g}
        want = [f"{n}.weight" for n in linear_modules if f"{n}.weight" in pending]
        have = [
            op.weight.op
            for op in main.operations
            if op.op_type == "linear" and op.weight.op is not None and id(op.weight.op) not in claimed
            and op.weight.op.name in ops
        ]
        if want and len(want) == len(have) and all(
            tuple(o.outputs[0].shape) == _shape(decoder, k) for k, o in zip(want, have)
        ):
            for k, o in zip(want, have):
                assign(k, o)
                claimed.add(id(o))
        embed_keys = [f"{n}.weight" for n, m in decoder.named_modules() if isinstance(m, nn.Embedding)]
        for k in embed_keys:
            if k in sources:
                continue
            tables = [
                op.x.op for op in main.operations
                if op.op_type == "gather" and op.x.op is not None and op.x.op.name in ops
                and id(op.x.op) not in claimed and tuple(op.x.shape) == _shape(decoder, k)
            ]
            if len(tables) == 1:
                assign(k, tables[0])
                claimed.add(id(tables[0]))

    pending_biases = {f"{n}.bias" for n in linear_modules} & (set(state) - set(sources))
    if pending_biases:
        linear_by_weight = {
            id(op.weight.op): op for op in main.operations if op.op_type == "linear" and op.weight.op is not None
        }
        for key in sorted(pending_biases):
            weight = sources.get(key.removesuffix(".bias") + ".weight")
            linear = linear_by_weight.get(id(weight)) if weight is not None else None
            bias = linear.bias.op if linear is not None and linear.bias is not None else None
            if bias is not None and bias.name in ops and tuple(bias.outputs[0].shape) == _shape(decoder, key):
                sources[key] = bias

    for key, op in sources.items():
        if tuple(op.outputs[0].shape) != tuple(state[key].shape):
            raise ValidationFailed(
                f"Core ML weight {op.name} has shape {tuple(op.outputs[0].shape)} but decoder weight "
                f"{key} has {tuple(state[key].shape)}: the package does not belong to this decoder spec"
            )
    missing = [k for k in state if k not in sources]
    return sources, missing


def identity_value(key: str) -> float:
    """The value that makes parameter `key` a no-op the converter may fold away: 0 for a
    bias (an add of zeros), 1 for a weight (a multiply by ones, e.g. an untrained norm)."""
    return 0.0 if key.endswith(".bias") else 1.0


def shared_weights(decoder: Decoder, sources: dict[str, object], missing: list[str],
                   stored_dtype: torch.dtype = torch.float32) -> dict[str, str]:
    """For each `missing` key, a mapped key holding exactly the same tensor (at the
    precision the package stores), if there is one: coremltools' const deduplication keeps
    one const for equal tensors (say, two all-zero LayerNorm biases of 100+ elements), and
    its name is the other parameter's. Keys at their identity value are left to
    `identity_weights`. missing key -> mapped key."""
    state = decoder.state_dict()
    found = {}
    for key in missing:
        if bool(torch.all(state[key] == identity_value(key))):
            continue
        value = state[key].to(stored_dtype)
        for other in sources:
            if state[other].shape == value.shape and torch.equal(state[other].to(stored_dtype), value):
                found[key] = other
                break
    return found


def identity_weights(decoder: Decoder, missing: list[str]) -> list[str]:
    """`missing` if every one of them holds its identity value (ones for a weight, zeros for
    a bias: the converter folds away a multiply by ones or an add of zeros); otherwise an
    ExportError naming the rest."""
    state = decoder.state_dict()
    lost = [k for k in missing if not bool(torch.all(state[k] == identity_value(k)))]
    if lost:
        raise ExportError(
            f"the Core ML program has no weight for decoder parameters {lost}; the weight mapping "
            "(mobilekit.runtime.coreml.map_weights) does not understand this program"
        )
    return sorted(missing)


def materialize(op) -> np.ndarray:
    """The weight an op yields: dequantized for constexpr ops, plain for consts."""
    if op.op_type == "const":
        return np.asarray(op.outputs[0].val)
    return np.asarray(op.materialized_val_inference())






def roundtrip_decoder(path: Path, spec: DecoderSpec) -> tuple[Decoder, dict]:
    """A fresh Decoder holding the weights stored in the package at `path`.

    Raises ValidationFailed if any decoder weight has no counterpart in the package other
    than those the export recorded: weights at their identity value (ones, or zeros for a
    bias) folded away by the converter, and weights sharing another's deduplicated const."""
    program, spec_pb = load_program(path)
    with torch.device("meta"):
        decoder = Decoder(spec)
    sources, missing = map_weights(program, decoder)
    identity = set(read_identity_metadata(spec_pb))
    shared = {k: v for k, v in read_shared_metadata(spec_pb).items() if k in missing and v in sources}
    unexplained = [k for k in missing if k not in identity and k not in shared]
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
        else:
            weights[key] = torch.full(state[key].shape, identity_value(key))
    decoder.load_state_dict(weights, strict=True, assign=True)
    if spec.tie_word_embeddings:
        decoder.lm_head.weight = decoder.embed_tokens.weight
    report = {
        "mapped": {k: sources[k].name for k in sources},
        "identity": sorted(identity & set(missing)),
        "shared": dict(sorted(shared.items())),
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
        for name in (KEY_CACHE, VALUE_CACHE):  # Core ML states are fp16 whatever the compute
            setattr(self.module, name, getattr(self.module, name).to(cache_dtype))
        self.dtype = dtype
        self.runtime = f"Core ML wrapper module, torch eager ({str(dtype).removeprefix('torch.')})"

    @torch.no_grad()
    def _run(self, tokens):
        end = self.position + len(tokens)
        mask = torch.from_numpy(causal_mask(len(tokens), end).astype(np.float32)).to(self.dtype)
        logits = self.module(torch.tensor([tokens], dtype=torch.int32), mask)
        return logits[0, -1].float().numpy()


# --- sessions: the real Core ML runtime (macOS) and the evaluator (Linux) -------------------






class StatefulSession(Session):
    """A stateful Core ML program driven as swift-transformers drives it: make_state() per
    sequence, then predict({inputIds, causalMask}, state=...) per chunk of tokens. `model` is
    the real MLModel (macOS) or mobilekit's evaluator of the same package (Linux)."""

    def __init__(self, model, max_seq_len: int, runtime: str):
        super().__init__(max_seq_len)
        self.model, self.runtime, self.state = model, runtime, None

    def reset(self) -> None:
        super().reset()
        self.state = self.model.make_state()

    def _run(self, tokens):
        if self.position == 0 or self.state is None:
            self.reset()
        end = self.position + len(tokens)
        inputs = {INPUT_IDS: np.asarray([tokens], dtype=np.int32), CAUSAL_MASK: causal_mask(len(tokens), end)}
        logits = np.asarray(self.model.predict(inputs, state=self.state)[LOGITS], dtype=np.float32)[0, -1]
        if not np.isfinite(logits).all():
            raise ValidationFailed(
                f"{self.runtime} produced non-finite logits (inf/NaN) at position {end - 1}: an fp16 overflow "
                "inside the graph, or a broken graph (on Linux, the evaluator with precision='fp32' tells the two apart)"
            )
        return logits


class CoreMLSession(StatefulSession):
    """The real stateful MLModel (macOS)."""

    def __init__(self, path: Path, max_seq_len: int, compute_units: str = "cpuAndNeuralEngine"):
        import coremltools as ct

        units = {
            "cpuOnly": ct.ComputeUnit.CPU_ONLY,
            "cpuAndGPU": ct.ComputeUnit.CPU_AND_GPU,
            "cpuAndNeuralEngine": ct.ComputeUnit.CPU_AND_NE,
            "all": ct.ComputeUnit.ALL,
        }[compute_units]
        super().__init__(ct.models.MLModel(str(path), compute_units=units), max_seq_len, COREML_RUNTIME)


class EvaluatorSession(StatefulSession):
    """The package's MIL program through mobilekit's evaluator (mobilekit.runtime.mil_evaluator),
    driven exactly as CoreMLSession drives the MLModel."""

    def __init__(self, path: Path, max_seq_len: int, precision: str = "model"):
        evaluator = load_evaluator(path, precision)
        compute = evaluator.declared_precision if precision == "model" else precision
        super().__init__(evaluator, max_seq_len, f"{EVALUATOR_RUNTIME}, {compute} compute")
        self.evaluator = evaluator


def coreml_generate(bundle_dir: Path, manifest: dict, prompt: str, max_new_tokens: int,
                    on_text: Callable[[str], None], session: Session | None = None) -> GenerationResult:
    """Greedy generation through `session`: by default the real Core ML model (macOS only);
    on Linux the caller passes an EvaluatorSession."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundle_dir)
    # The prompt is already chat-formatted (the template writes any BOS itself).
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    max_seq_len = int(manifest["max_seq_len"])
    stop = set(manifest.get("eos_ids") or ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []))
    if session is None:
        session = CoreMLSession(bundle_dir / MODEL_FILE, max_seq_len, compute_units_from_manifest(manifest))
    session.reset()

    t0 = time.perf_counter()
    logits = session.step(prompt_ids)
    token = int(np.argmax(logits))
    t_first = time.perf_counter()
    generated = [token]
    shown = ""

    def emit():
        nonlocal shown
        text = tokenizer.decode(generated, skip_special_tokens=True)
        if len(text) > len(shown) and not text.endswith("\ufffd"):
            on_text(text[len(shown):])
            shown = text

    emit()
    while token not in stop and len(generated) < max_new_tokens and session.position < max_seq_len:
        token = int(np.argmax(session.step([token])))
        generated.append(token)
        emit()
    t_end = time.perf_counter()
    decode_steps = len(generated) - 1
    return GenerationResult(
        text=tokenizer.decode(generated, skip_special_tokens=True),
        token_ids=generated,
        prompt_tokens=len(prompt_ids),
        time_to_first_token_s=t_first - t0,
        prefill_tokens_per_s=len(prompt_ids) / max(t_first - t0, 1e-9),
        decode_tokens_per_s=decode_steps / max(t_end - t_first, 1e-9),
        runtime=session.runtime,
    )


__all__ = [
    "CoreMLSession",
    "EvaluatorSession",
    "StatefulSession",
    "causal_mask",
    "coreml_generate",
    "load_program",
    "map_weights",
    "roundtrip_decoder",
    "spec_from_manifest",
    "WrapperSession",
]
