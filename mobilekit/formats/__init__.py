"""Per-format contracts: file names, I/O names and shapes, metadata keys, runtime configs
and spec checks that a target (the writer) and its runtime (the reader) both import.
No torch; never imports targets/ or runtime/."""

from __future__ import annotations


def layer_states(spec) -> list[dict]:
    """Per layer, the state it carries from one call to the next, as every format's manifest
    describes it (io["layer_states"]): a KV cache ("kv": its kv heads, head size and sliding
    window, null = full causal) or a convolution state ("conv": the last kernel-1 inputs of
    each of `channels` channels, zeros before the first token). A target adds to each entry
    where that state lives in its artefact, so apps and demo cores can drive any mix of
    kinds from the manifest alone."""
    states = []
    for i in range(spec.num_layers):
        if spec.layer_state(i) == "conv":
            states.append({"layer": i, "kind": "conv", "channels": spec.hidden_size, "kernel": spec.conv_kernel,
                           "shape": [1, spec.hidden_size, spec.conv_kernel - 1]})
        else:
            states.append({"layer": i, "kind": "kv", "kv_heads": spec.layer_kv_heads(i), "head_dim": spec.head_dim,
                           "window": spec.layer_window(i)})
    return states
