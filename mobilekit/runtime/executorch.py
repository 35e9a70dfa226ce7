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

from mobilekit.formats.executorch import FORWARD_METHOD
from mobilekit.runtime import GenerationResult, Session, threads

RUNNER = "ExecuTorch TextLLMRunner"


def _set_threads() -> None:
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

    _unsafe_reset_threadpool(threads())


class ExecuTorchSession(Session):
    runtime = "ExecuTorch (pybindings)"

    def __init__(self, pte: Path, max_seq_len: int, max_call_tokens: int | None = None):
        super().__init__(max_seq_len, max_call_tokens)
        from executorch.runtime import Runtime

        _set_threads()
        self._method = Runtime.get().load_program(pte).load_method(FORWARD_METHOD)

    def _run(self, tokens):
        ids = torch.tensor([tokens], dtype=torch.long)
        pos = torch.tensor([self.position], dtype=torch.long)
        (logits,) = self._method.execute([ids, pos])
        return logits.float().numpy()[0]


@contextlib.contextmanager
def _native_output_silenced():
    """The C++ runner prints every token and a stats line to the process's stdout, and its
    progress log to stderr, on top of calling our callbacks. Point fds 1 and 2 elsewhere
    while it runs (stderr kept in a temporary file and shown only if the run fails), and keep
    Python's sys.stdout/sys.stderr on the real terminal, so text is shown once, cleanly."""
    import tempfile

    swapped = []
    native_log = tempfile.TemporaryFile()
    sinks = {1: os.open(os.devnull, os.O_WRONLY), 2: native_log.fileno()}
    saved = {}
    try:
        for fd, name in ((1, "stdout"), (2, "stderr")):
            stream = getattr(sys, name)
            stream.flush()
            saved[fd] = os.dup(fd)
            os.dup2(sinks[fd], fd)
            try:
                on_fd = stream.fileno() == fd
            except (AttributeError, OSError, ValueError):  # already redirected in Python (tests)
                on_fd = False
            if on_fd:
                setattr(sys, name, io.TextIOWrapper(os.fdopen(os.dup(saved[fd]), "wb", buffering=0),
                                                    write_through=True))
                swapped.append((name, stream))
        yield
    except BaseException:
        native_log.seek(0)
        sys.stderr.write(native_log.read().decode(errors="replace"))
        raise
    finally:
        for name, stream in swapped:
            getattr(sys, name).close()
            setattr(sys, name, stream)
        for fd, original in saved.items():
            os.dup2(original, fd)
            os.close(original)
        os.close(sinks[1])
        native_log.close()


def runner_generate(pte: Path, tokenizer: Path, prompt: str, max_new_tokens: int,
                    on_text: Callable[[str], None], add_bos: bool) -> GenerationResult:
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    pieces: list[str] = []
    stats: dict = {}

    def on_token(text: str) -> None:
        pieces.append(text)
        on_text(text)

    def on_stats(s) -> None:
        stats.update(json.loads(s.to_json_string()))

    config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0, echo=False, num_bos=int(add_bos))
    with _native_output_silenced():
        _set_threads()
        runner = TextLLMRunner(str(pte), str(tokenizer))
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
