"""Checks of a Core ML bundle's stage 2 through mobilekit's MIL program evaluator, shared by
the per-family tests (tests/families/test_more_families.py calls them on the bundles it
exports, so no package is converted twice)."""

import sys

import numpy as np

from mobilekit.formats.coreml import load_program
from mobilekit.runtime.coreml import EVALUATOR_RUNTIME, EvaluatorSession
from mobilekit.runtime.eager import EagerSession
from mobilekit.targets.coreml import MODEL_FILE

# prefill past the 16-token sliding windows, single decode steps, then chunks
CHUNKS = ([5, 9, 33, 100, 7, 8, 200, 3, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52], [12], [13],
          [14, 15, 16, 17, 18, 19, 20, 21], [22], [23])


# How far an fp32 package's fp16 states (as on device) may move its logits over stage 2's ~80
# decode steps. A Gated DeltaNet passes the fp16 rounding of its conv state's inputs on at full
# scale (its q and k are l2-normalized, each head's output RMS-normalized): the tiny qwen3_5
# moves by 7.7e-3; over 100 decode steps its conv state alone in fp16 moved them by 5.3e-3, its
# recurrent state alone by 1.2e-3, its KV cache alone by 6e-4. Its graph with the states
# widened to fp32 stays within 3e-6.
# Gemma 3n's attention is unscaled, over unit-RMS q, k and v, and AltUp mixes four streams:
# the tiny gemma3n moves by 1.58e-2, and stays within 2.8e-5 with the states in fp32.
FP16_STATES_BOUND = 5e-3
DELTA_FP16_STATES_BOUND = 1.5e-2
ALTUP_FP16_STATES_BOUND = 3e-2


def max_error(decoder, package, max_seq_len: int, precision: str = "fp32") -> float:
    """Max |Δlogit| between the eager decoder and the package's program through the evaluator."""
    eager, evaluated = EagerSession(decoder, max_seq_len), EvaluatorSession(package, max_seq_len, precision)
    eager.reset()
    evaluated.reset()
    return max(float(np.abs(eager.step(chunk) - evaluated.step(chunk)).max()) for chunk in CHUNKS)


def _tanh_gelu_exported_as_exact(spec, package) -> bool:
    program, _ = load_program(package)
    modes = {op.mode.val for op in program.functions["main"].operations if op.op_type == "gelu"}
    return spec.activation == "gelu_tanh" and "EXACT" in modes


def check_coreml_stage2(name: str, context, result, scheme: str) -> None:
    """On Linux the evaluator ran stage 2 (the manifest says so). At fp32 the evaluator, with the
    states widened to fp32, gives the eager decoder's logits to float precision: the converted
    graph is exact, and the fp16 states (as on device) move the logits by ~1e-3 (a few 1e-3
    with delta layers), no more."""
    stage2 = result.manifest["validation"]["stage2"]
    if sys.platform != "darwin":
        assert stage2["runtime"].startswith(EVALUATOR_RUNTIME), stage2["runtime"]
    if scheme != "fp32":
        return
    spec = context.checkpoint.spec
    bound = (ALTUP_FP16_STATES_BOUND if spec.altup_inputs else DELTA_FP16_STATES_BOUND if spec.delta_layers
             else FP16_STATES_BOUND)
    assert stage2["metrics"]["max_abs_logit_error"] < bound
    decoder, package = context.checkpoint.build_decoder(), result.path / MODEL_FILE
    # The evaluator found this once: torch.export keeps gelu(approximate="tanh") as a keyword
    # coremltools' converter does not read, so the package computed the exact-erf GELU.
    assert not _tanh_gelu_exported_as_exact(spec, package), f"{name}: tanh-GELU converted as exact"
    assert max_error(decoder, package, context.max_seq_len) < (4e-5 if spec.altup_inputs else 2e-5)
