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

    def __init__(self, max_seq_len: int):
        self.max_seq_len = max_seq_len
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
        logits = self._run(list(tokens))
        self.position += len(tokens)
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
