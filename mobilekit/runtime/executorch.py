"""ExecuTorch from Python: a pybindings Session for validation, and the C++ LLM runner
(the same TextLLMRunner apps embed) for generation and benchmarks."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Callable

import torch

from mobilekit.runtime import Session
from mobilekit.targets import GenerationResult

RUNNER = "ExecuTorch TextLLMRunner"


def _set_threads() -> None:
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

    _unsafe_reset_threadpool(int(os.environ.get("MOBILEKIT_THREADS", os.cpu_count() or 1)))


class ExecuTorchSession(Session):
    runtime = "ExecuTorch (pybindings)"

    def __init__(self, pte: Path, max_seq_len: int):
        super().__init__(max_seq_len)
        from executorch.runtime import Runtime

        _set_threads()
        self._method = Runtime.get().load_program(pte).load_method("forward")

    def _run(self, tokens):
        ids = torch.tensor([tokens], dtype=torch.long)
        pos = torch.tensor([self.position], dtype=torch.long)
        (logits,) = self._method.execute([ids, pos])
        return logits.float().numpy()[0]


@contextlib.contextmanager
def _python_only_stdout():
    """The C++ runner prints every token and a stats line to the process's stdout itself,
    on top of calling our callback; send its writes to /dev/null while Python's sys.stdout
    keeps the real terminal, so text is shown once, by the caller."""
    sys.stdout.flush()
    python_stdout = sys.stdout
    try:
        on_fd1 = python_stdout.fileno() == 1
    except (AttributeError, OSError, ValueError):  # already redirected in Python (e.g. tests)
        on_fd1 = False
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        if on_fd1:
            sys.stdout = io.TextIOWrapper(os.fdopen(os.dup(saved), "wb", buffering=0), write_through=True)
        yield
    finally:
        if on_fd1:
            sys.stdout.close()
            sys.stdout = python_stdout
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def runner_generate(pte: Path, tokenizer: Path, prompt: str, max_new_tokens: int,
                    on_text: Callable[[str], None], add_bos: bool) -> GenerationResult:
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    _set_threads()
    runner = TextLLMRunner(str(pte), str(tokenizer))
    pieces: list[str] = []
    stats: dict = {}

    def on_token(text: str) -> None:
        pieces.append(text)
        on_text(text)

    def on_stats(s) -> None:
        stats.update(json.loads(s.to_json_string()))

    config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0, echo=False, num_bos=int(add_bos))
    with _python_only_stdout():
        runner.generate(prompt, config, on_token, on_stats)
    start = stats["inference_start_ms"]
    prefill_ms = max(stats["prompt_eval_end_ms"] - start, 1e-3)
    decode_ms = max(stats["inference_end_ms"] - stats["prompt_eval_end_ms"], 1e-3)
    generated = stats["generated_tokens"]
    return GenerationResult(
        text="".join(pieces),
        token_ids=[],
        prompt_tokens=stats["prompt_tokens"],
        time_to_first_token_s=(stats["first_token_ms"] - start) / 1000,
        prefill_tokens_per_s=stats["prompt_tokens"] / prefill_ms * 1000,
        # the first token comes out of prefill; the rest are decode steps
        decode_tokens_per_s=max(generated - 1, 0) / decode_ms * 1000,
        runtime=RUNNER,
    )
