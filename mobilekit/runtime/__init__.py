"""Run artefacts from Python through the runtimes apps use.

A Session is the minimal incremental interface validation needs: feed tokens, get the
logits after the last one, with the KV cache advancing inside the runtime.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass
class GenerationResult:
    """One generation through the app runtime, with its timings."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    time_to_first_token_s: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    runtime: str


def threads() -> int:
    """CPU threads every runtime (and the eager baseline) uses: MOBILEKIT_THREADS, else all cores."""
    return int(os.environ.get("MOBILEKIT_THREADS", os.cpu_count() or 1))


class Session(ABC):
    runtime: str = ""

    def __init__(self, max_seq_len: int, max_call_tokens: int | None = None):
        self.max_seq_len = max_seq_len
        # the most tokens one call takes (a delta model's, modeling.decoder.max_call_tokens);
        # step() feeds longer prompts in calls of this size, as the app runtimes do
        self.max_call_tokens = max_call_tokens
        self.position = 0

    @abstractmethod
    def _run(self, tokens: list[int]) -> np.ndarray:
        """Run `tokens` at self.position; return float32 logits [V] of the last one."""

    def reset(self) -> None:
        """Start a new sequence (the cache contents past `position` are never read)."""
        self.position = 0

    def step(self, tokens: list[int]) -> np.ndarray:
        if self.position + len(tokens) > self.max_seq_len:
            raise ValueError(f"sequence of {self.position + len(tokens)} tokens exceeds max_seq_len {self.max_seq_len}")
        chunk = self.max_call_tokens or max(len(tokens), 1)
        for part in [list(tokens[i:i + chunk]) for i in range(0, len(tokens), chunk)] or [[]]:
            logits = self._run(part)
            self.position += len(part)
        return np.asarray(logits, dtype=np.float32).reshape(-1)

    def greedy(self, prompt: list[int], max_new_tokens: int, stop_ids: set[int] = frozenset()) -> list[int]:
        self.reset()
        logits = self.step(prompt)
        out = []
        for _ in range(max_new_tokens):
            token = int(np.argmax(logits))
            out.append(token)
            if token in stop_ids or self.position >= self.max_seq_len:
                break
            logits = self.step([token])
        return out
