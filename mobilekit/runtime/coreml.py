"""Core ML from Python.

macOS: `CoreMLSession` runs the real stateful MLModel (make_state, then predict with
inputIds + causalMask, prefill then decode), and `coreml_generate` generates greedily with
the bundle's tokenizer.

Linux (no Core ML runtime; coremltools' wheel lacks libcoremlpython): `EvaluatorSession`
runs the saved package's MIL program op by op through `mobilekit.runtime.mil_evaluator`,
with its states held between calls as Core ML holds them: the stage-2 runtime of a Core ML
bundle there, and what `generate` runs. It executes the converted graph in numpy; it is not
Core ML, and its fp16 arithmetic estimates the device's (see that module).

Neither imports torch: running an artefact needs the bundle only. (The weight mapping the
export uses to record folded or merged weights is in mobilekit.lowering.coreml.)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from mobilekit.errors import ValidationFailed
from mobilekit.formats.coreml import (CAUSAL_MASK, INPUT_IDS, LOGITS, MODEL_FILE, causal_mask,
                                      compute_units_from_manifest)
from mobilekit.runtime import GenerationResult, Session
from mobilekit.runtime.mil_evaluator import load_evaluator

COREML_RUNTIME = "Core ML (MLModel.predict, stateful)"
EVALUATOR_RUNTIME = "mobilekit Core ML evaluator (MIL program in numpy, not Core ML)"

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


