"""ONNX from Python: a plain ONNX Runtime Session (past/present loop) for validation, and
ONNX Runtime GenAI (the runtime apps embed) for generation and benchmarks."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from mobilekit.formats.onnx import (ATTENTION_MASK, INPUT_IDS, LOGITS, PAST_SEQ, POSITION_IDS, is_past_name,
                                    is_present_name, past_name_of, read_genai_config)
from mobilekit.runtime import GenerationResult, Session, threads

GENAI = "ONNX Runtime GenAI"
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class OnnxSession(Session):
    """The exported model under plain ONNX Runtime (CPU): input_ids, attention_mask and
    position_ids for the new tokens, each present fed back as the next past."""

    runtime = "ONNX Runtime (CPU)"

    def __init__(self, model: Path, max_seq_len: int):
        super().__init__(max_seq_len)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self._past_inputs = [i for i in self._session.get_inputs() if is_past_name(i.name)]
        self._output_names = [o.name for o in self._session.get_outputs()]
        self._feeds_back = {o: past_name_of(o) for o in self._output_names if is_present_name(o)}
        self._past: dict[str, np.ndarray] = {}
        self.reset()

    def reset(self) -> None:
        """Zero pasts shaped from the graph's inputs: the past sequence length is 0 before the
        first token (a KV cache starts empty); a past without that axis (a conv state
        [1, channels, kernel-1], a delta layer's recurrent state [1, value_heads, key_dim,
        value_dim]) starts as zeros of its full, fixed shape, in the input's own dtype (a
        recurrent state is float32 even in an fp16 graph)."""
        super().reset()
        self._past = {
            i.name: np.zeros([0 if d == PAST_SEQ else d for d in i.shape], dtype=_NUMPY_TYPES[i.type])
            for i in self._past_inputs
        }

    def _run(self, tokens):
        if self.position == 0:
            self.reset()
        start, t = self.position, len(tokens)
        feeds = {
            INPUT_IDS: np.array([tokens], dtype=np.int64),
            ATTENTION_MASK: np.ones((1, start + t), dtype=np.int64),
            POSITION_IDS: np.arange(start, start + t, dtype=np.int64)[None],
            **self._past,
        }
        outputs = dict(zip(self._output_names, self._session.run(self._output_names, feeds)))
        self._past = {past: outputs[present] for present, past in self._feeds_back.items()}
        return outputs[LOGITS][0, -1].astype(np.float32)


def genai_greedy(bundle_dir: Path, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy token ids from onnxruntime_genai on the bundle folder (token level, for
    validation: the app runtime's own cache handling and search, no tokenizer involved)."""
    import onnxruntime_genai as og

    model = og.Model(str(bundle_dir))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt_ids) + max_new_tokens)
    generator = og.Generator(model, params)
    generator.append_tokens(list(prompt_ids))
    tokens: list[int] = []
    while not generator.is_done() and len(tokens) < max_new_tokens:
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens


def genai_generate(bundle_dir: Path, prompt: str, max_new_tokens: int,
                   on_text: Callable[[str], None]) -> GenerationResult:
    """Greedy generation through onnxruntime_genai on the bundle folder as apps load it,
    streaming text through the GenAI tokenizer's stream decoder."""
    import onnxruntime_genai as og

    config = og.Config(str(bundle_dir))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads()}}}}))
    model = og.Model(config)
    tokenizer = og.Tokenizer(model)
    stream = tokenizer.create_stream()
    prompt_ids = [int(i) for i in tokenizer.encode(prompt)]
    context, eos = read_genai_config(bundle_dir)

    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=min(len(prompt_ids) + max_new_tokens, context))
    generator = og.Generator(model, params)

    pieces: list[str] = []
    tokens: list[int] = []
    start = time.perf_counter()
    generator.append_tokens(prompt_ids)  # runs the prompt through the model (prefill)
    prefill_end = time.perf_counter()
    first_token = prefill_end
    while not generator.is_done() and len(tokens) < max_new_tokens:
        generator.generate_next_token()
        token = int(generator.get_next_tokens()[0])
        if not tokens:
            first_token = time.perf_counter()
        tokens.append(token)
        if token in eos:  # GenAI stops here too; the stop token's text is not streamed
            break
        text = stream.decode(token)
        if text:
            pieces.append(text)
            on_text(text)
    end = time.perf_counter()
    # The first token comes out of prefill; the decode steps are the tokens after it.
    decode_s = max(end - first_token, 1e-9)
    return GenerationResult(
        text="".join(pieces),
        token_ids=tokens,
        prompt_tokens=len(prompt_ids),
        time_to_first_token_s=first_token - start,
        prefill_tokens_per_s=len(prompt_ids) / max(prefill_end - start, 1e-9),
        decode_tokens_per_s=max(len(tokens) - 1, 0) / decode_s,
        runtime=GENAI,
    )
