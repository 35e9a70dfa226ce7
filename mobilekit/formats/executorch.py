"""The ExecuTorch bundle format: what the writer (mobilekit.targets.executorch) and the
readers (mobilekit.runtime.executorch, ExecuTorch's LLM runner in the apps) agree on.

`model.pte` with one method, forward(tokens [1,T] int64, input_pos [1] int64) -> logits
[1,V] of the last token, its KV cache in mutable buffers; the runner reads the constant
methods below, named exactly as its C++ code looks them up, and the bundle's tokenizer.json.
"""

from __future__ import annotations

MODEL_FILE = "model.pte"
TOKENIZER_FILE = "tokenizer.json"
FORWARD_METHOD = "forward"
TOKENS, INPUT_POS, LOGITS = "tokens", "input_pos", "logits"


# The program's mutable buffers, per layer (internal to the .pte; named in the manifest)
def kv_cache_buffers(layer: int) -> tuple[str, str]:
    return f"k_cache_{layer}", f"v_cache_{layer}"


def conv_state_buffer(layer: int) -> str:
    return f"conv_state_{layer}"


def recurrent_state_buffer(layer: int) -> str:
    return f"recurrent_state_{layer}"


def constant_methods(max_seq_len: int, vocab_size: int, num_layers: int, bos_id: int | None,
                     eos_ids: list[int], max_call_tokens: int | None = None) -> dict:
    """The constant methods ExecuTorch's TextLLMRunner reads (bos -1 = none). Its
    get_max_seq_len is the most tokens one forward call takes (the runner prefills longer
    prompts in chunks of it), get_max_context_len the cache's length."""
    return {
        "get_max_seq_len": max_call_tokens or max_seq_len,
        "get_max_context_len": max_seq_len,
        "get_vocab_size": vocab_size,
        "get_n_layers": num_layers,
        "get_bos_id": bos_id if bos_id is not None else -1,
        "get_eos_ids": list(eos_ids),
        "use_kv_cache": True,
        "use_sdpa_with_kv_cache": True,
        "enable_dynamic_shape": True,
    }
