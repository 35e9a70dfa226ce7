"""Per-format contracts: file names, I/O names and shapes, metadata keys, runtime configs
and spec checks that a target (the writer) and its runtime (the reader) both import.
No torch; never imports targets/ or runtime/."""

from __future__ import annotations


def layer_states(spec) -> list[dict]:
    """Per layer, the state it carries from one call to the next, as every format's manifest
    describes it (io["layer_states"]):
      "kv": a KV cache (its kv heads, head size and sliding window, null = full causal);
      "conv": a convolution state (the last kernel-1 inputs of each of `channels` channels);
      "delta": a Gated DeltaNet's two states, its conv's (the same fields as "conv") and its
               recurrent matrix (`recurrent_shape`: [1, value heads, key dim, value dim]).
    Conv and recurrent states are zeros before the first token. A KV layer that shares
    another's keys and values (Gemma 3n) names it (`kv_source`): its cache holds a copy of
    that layer's, written by the model, so an app drives it like any other. A target adds to
    each entry where that state lives in its artefact, so apps and demo cores can drive any
    mix of kinds from the manifest alone."""
    states = []
    for i in range(spec.num_layers):
        kind = spec.layer_state(i)
        if kind in ("conv", "delta"):
            state = {"layer": i, "kind": kind, "channels": spec.conv_channels, "kernel": spec.conv_kernel,
                     "shape": [1, spec.conv_channels, spec.conv_kernel - 1]}
            if kind == "delta":
                state["recurrent_shape"] = list(spec.recurrent_state_shape)
            states.append(state)
        else:
            state = {"layer": i, "kind": "kv", "kv_heads": spec.layer_kv_heads(i), "head_dim": spec.head_dim,
                     "window": spec.layer_window(i)}
            if spec.kv_source(i) is not None:
                state["kv_source"] = spec.kv_source(i)
            states.append(state)
    return states
