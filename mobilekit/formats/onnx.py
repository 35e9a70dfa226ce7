"""The ONNX bundle format: what the writer (mobilekit.targets.onnx) and the readers
(mobilekit.runtime.onnx, ONNX Runtime GenAI) agree on.

`model.onnx` + `model.onnx.data` + `genai_config.json`, in the layout of Hugging Face /
optimum decoder exports, which GenAI reads through `genai_config.json` with
`past_present_share_buffer: false`:

  inputs   input_ids [1,T] int64, attention_mask [1,P+T] int64, position_ids [1,T] int64,
           past_key_values.{i}.key|value [1,kv_heads,P,head_dim]     (attention layers i)
           past_key_values.{i}.conv_state [1,channels,kernel-1]      (conv and delta layers i)
           past_key_values.{i}.recurrent_state [1,value_heads,key_dim,value_dim] float32
                                                                     (delta layers i)
  outputs  logits [1,T,V] float32, present.{i}.key|value [1,kv_heads,P+T,head_dim],
           present.{i}.conv_state [1,channels,kernel-1],
           present.{i}.recurrent_state [1,value_heads,key_dim,value_dim] float32

The app feeds each present back as the next past: a KV present is concat(past, new) (when
attention_mask is wider than P+T, concat(past, zero rows, new) as wide as it: how ONNX
Runtime GenAI 0.18 appends after generated tokens, lowering.onnx GENAI_GAP), a conv
present the last kernel-1 inputs of the layer's convolution, a recurrent present a Gated
DeltaNet's matrix state after these tokens (both zeros before the first token). The matrix
state is float32 under every scheme, fp16 included: the decoder runs the recurrence in fp32
(gated_delta_rule), so that is the state it hands over; GenAI's own builder keeps it float too.
A folder with LFM2's conv layers declares GenAI's "lfm2" model type (its cache for hybrid
conv/attention stacks); one with delta layers the decoder-only "llama", whose recurrent state
holds both of a delta layer's tensors (genai_type). genai_config.json names the conv and
recurrent states (past_conv_names, present_conv_names, past_recurrent_names,
present_recurrent_names): GenAI 0.18's defaults, in the past_key_values./present. prefixes that
every past and present here share (GenAI's own builder writes past.%d.conv and
past.%d.recurrent instead).
"""

from __future__ import annotations

import json
from pathlib import Path

from mobilekit.formats import layer_states

INPUT_IDS, ATTENTION_MASK, POSITION_IDS, LOGITS = "input_ids", "attention_mask", "position_ids", "logits"
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
GENAI_CONFIG = "genai_config.json"
PAST_KEY, PAST_VALUE = "past_key_values.%d.key", "past_key_values.%d.value"
PRESENT_KEY, PRESENT_VALUE = "present.%d.key", "present.%d.value"
PAST_CONV, PRESENT_CONV = "past_key_values.%d.conv_state", "present.%d.conv_state"
PAST_RECURRENT, PRESENT_RECURRENT = "past_key_values.%d.recurrent_state", "present.%d.recurrent_state"
PAST_PREFIX, PRESENT_PREFIX = "past_key_values.", "present."
# Symbolic dims, named as in ONNX Runtime GenAI's own builder.
SEQ, PAST_SEQ, TOTAL_SEQ = "sequence_length", "past_sequence_length", "total_sequence_length"


def layer_state_names(spec, layer: int) -> list[tuple[str, str]]:
    """(past input, present output) of each tensor of the state `layer` carries
    (spec.layer_state): its key and value for a KV cache, its conv_state for a convolution,
    its conv_state then its recurrent_state for a Gated DeltaNet."""
    kind = spec.layer_state(layer)
    if kind == "conv":
        return [(PAST_CONV % layer, PRESENT_CONV % layer)]
    if kind == "delta":
        return [(PAST_CONV % layer, PRESENT_CONV % layer), (PAST_RECURRENT % layer, PRESENT_RECURRENT % layer)]
    return [(PAST_KEY % layer, PRESENT_KEY % layer), (PAST_VALUE % layer, PRESENT_VALUE % layer)]


def past_names(spec) -> list[str]:
    """The graph's past inputs after input_ids, attention_mask, position_ids, layer by layer."""
    return [past for i in range(spec.num_layers) for past, _ in layer_state_names(spec, i)]


def present_names(spec) -> list[str]:
    """The graph's present outputs after logits, in the order of past_names."""
    return [present for i in range(spec.num_layers) for _, present in layer_state_names(spec, i)]


def past_name_of(present_name: str) -> str:
    """The past input a present output is fed back as: present.{i}.key -> past_key_values.{i}.key."""
    return PAST_PREFIX + present_name.removeprefix(PRESENT_PREFIX)


def is_past_name(name: str) -> bool:
    return name.startswith(PAST_PREFIX)


def is_present_name(name: str) -> bool:
    return name.startswith(PRESENT_PREFIX)


def read_genai_config(bundle_dir: Path) -> tuple[int, set[int]]:
    """(context length, stop token ids) that genai_config.json declares."""
    declared = json.loads((Path(bundle_dir) / GENAI_CONFIG).read_text())["model"]
    eos = declared["eos_token_id"]
    return declared["context_length"], set(eos if isinstance(eos, list) else [eos])


# --- GenAI config and I/O description ----------------------------------------------------


# GenAI's name for the layer type of each state kind (its decoder.layer_types, as its builder
# writes them from the checkpoint's). Sliding layers are "full_attention" to GenAI too: the
# graph keeps their past full length and windows it with a mask, so GenAI must keep the whole
# cache, as it does for full layers. Only the "lfm2" type reads layer_types (genai_type).
GENAI_LAYER_TYPES = {"kv": "full_attention", "conv": "conv"}


def genai_type(spec) -> str:
    """The GenAI model type a folder declares. GenAI picks its model class (how it feeds inputs
    and the cache) by type; every mobilekit graph has the same decoder-only I/O whatever the
    family, which "llama" names. Family types would not: GenAI's "gpt2" expects a fused past
    (past_%d), for one. So the type follows the state kinds the layers carry, not the family:
      LFM2's conv layers need the cache of GenAI's "lfm2" type (LFM2Cache: key/value and conv
        states, told apart by decoder.layer_types);
      delta layers need the decoder-only types' recurrent state (GenAI 0.18's RecurrentState),
        which finds each delta layer's conv and matrix state among the graph's inputs by
        past_conv_names / past_recurrent_names and feeds both back, zeros first. "lfm2" has no
        such state: its graph runs fail with "Missing Input: past_key_values.0.recurrent_state"
        (tested). GenAI's own builder declares Qwen3.5 "qwen3_5_text", another decoder-only
        type that runs these graphs the same (tested); "llama" keeps the rule above, and stays
        clear of whatever a later GenAI ties to Qwen3.5's type (its builder's graphs take
        3D multimodal position_ids; ours take [1, T])."""
    return "lfm2" if spec.conv_layers and not spec.delta_layers else "llama"


def genai_config(spec, max_seq_len: int, bos_id: int | None, eos_ids: list[int]) -> dict:
    """The genai_config.json ONNX Runtime GenAI loads the folder with (fields as its own
    builder writes them; past_present_share_buffer false because present = concat(past, new))."""
    eos = list(eos_ids)
    model = {
        "context_length": max_seq_len,
        "decoder": {
            "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
            "filename": MODEL_FILE,
            "head_size": spec.head_dim,
            "hidden_size": spec.hidden_size,
            "inputs": {
                "input_ids": INPUT_IDS,
                "attention_mask": ATTENTION_MASK,
                "position_ids": POSITION_IDS,
                "past_key_names": PAST_KEY,
                "past_value_names": PAST_VALUE,
            },
            "outputs": {
                "logits": LOGITS,
                "present_key_names": PRESENT_KEY,
                "present_value_names": PRESENT_VALUE,
            },
            "num_attention_heads": spec.num_heads,
            "num_hidden_layers": spec.num_layers,
            "num_key_value_heads": spec.num_kv_heads,
        },
        "eos_token_id": eos[0] if len(eos) == 1 else eos,
        "pad_token_id": eos[0] if eos else 0,
        "type": genai_type(spec),
        "vocab_size": spec.vocab_size,
    }
    decoder = model["decoder"]
    if spec.conv_layers:
        decoder["inputs"]["past_conv_names"] = PAST_CONV
        decoder["outputs"]["present_conv_names"] = PRESENT_CONV
    if spec.delta_layers:
        decoder["inputs"]["past_recurrent_names"] = PAST_RECURRENT
        decoder["outputs"]["present_recurrent_names"] = PRESENT_RECURRENT
    elif spec.conv_layers:
        # which layers hold key/value and which a conv state: the names index layers
        decoder["layer_types"] = [GENAI_LAYER_TYPES[spec.layer_state(i)] for i in range(spec.num_layers)]
        decoder["conv_cache_size"] = spec.conv_kernel - 1
    if bos_id is not None:
        model["bos_token_id"] = bos_id
    search = {
        "diversity_penalty": 0.0,
        "do_sample": False,
        "early_stopping": True,
        "length_penalty": 1.0,
        "max_length": max_seq_len,
        "min_length": 0,
        "no_repeat_ngram_size": 0,
        "num_beams": 1,
        "num_return_sequences": 1,
        "past_present_share_buffer": False,
        "repetition_penalty": 1.0,
        "temperature": 1.0,
        "top_k": 1,
        "top_p": 1.0,
    }
    return {"model": model, "search": search}


def sliding_window_note(spec) -> dict | None:
    """How sliding-window layers are run (None if the model has none): the past stays full
    length and the window is a mask, so results are exact at any context but the cache of
    a sliding layer is as large as a full layer's."""
    layers = [i for i in range(spec.num_layers) if spec.layer_window(i)]
    if not layers:
        return None
    return {
        "window": spec.sliding_window,
        "layers": layers,
        "cache": "full length: past/present of sliding layers hold every position, like the other layers",
        "masking": "inside the graph: in a sliding layer query position q sees key positions k with "
        "q - window < k <= q (and attention_mask[k] = 1)",
    }


def per_layer_kv_note(spec) -> dict:
    """Where layers differ in kv heads (OpenELM): each layer's count, since each past/present
    input has its own shape (kv_heads is the largest)."""
    if spec.uniform_kv_heads:
        return {}
    return {
        "kv_heads_per_layer": [spec.layer_kv_heads(i) for i in range(spec.num_layers)],
        "per_layer_shapes": "past/present of layer i are [1, kv_heads_per_layer[i], sequence, head_dim]",
    }


def io_contract(spec, max_seq_len: int, kv_dtype: str) -> dict:
    """The manifest's io section: graph inputs and outputs with their shapes (symbolic dims by
    name), the KV cache of the attention layers, and io["layer_states"]: per layer its state
    (formats.layer_states) and the past inputs / present outputs that carry it."""
    kv, hd = spec.num_kv_heads, spec.head_dim
    past, present = [], []
    states = layer_states(spec)
    for state in states:
        i = state["layer"]
        names = layer_state_names(spec, i)
        # (dtype, past shape, present shape) of each of the layer's tensors, in the order of names
        if state["kind"] == "kv":
            kv_past = [1, spec.layer_kv_heads(i), PAST_SEQ, hd]
            tensors = [(kv_dtype, kv_past, [1, spec.layer_kv_heads(i), TOTAL_SEQ, hd])] * 2
        else:
            tensors = [(kv_dtype, state["shape"], state["shape"])]
            if state["kind"] == "delta":
                tensors.append(("float32", state["recurrent_shape"], state["recurrent_shape"]))
        past += [{"name": name, "dtype": dtype, "shape": shape} for (name, _), (dtype, shape, _) in zip(names, tensors)]
        present += [{"name": name, "dtype": dtype, "shape": shape}
                    for (_, name), (dtype, _, shape) in zip(names, tensors)]
        state["inputs"] = [name for name, _ in names]
        state["outputs"] = [name for _, name in names]
    return {
        "inputs": [
            {"name": INPUT_IDS, "dtype": "int64", "shape": [1, SEQ]},
            {"name": ATTENTION_MASK, "dtype": "int64", "shape": [1, TOTAL_SEQ]},
            {"name": POSITION_IDS, "dtype": "int64", "shape": [1, SEQ]},
            *past,
        ],
        "outputs": [{"name": LOGITS, "dtype": "float32", "shape": [1, SEQ, spec.vocab_size]}, *present],
        "layer_states": states,
        "kv_cache": {
            "kind": "past/present tensors: feed present.{i}.* back as past_key_values.{i}.*; "
            "present = concat(past, new) along the sequence axis",
            # the attention layers: all of them, unless some carry another state (which ones: io.layer_states)
            "layers": len(spec.attention_layers),
            "kv_heads": kv,
            "head_dim": hd,
            "layout": ["batch", "kv_heads", "sequence", "head_dim"],
            "shape_per_layer": [1, kv, PAST_SEQ, hd],
            "dtype": kv_dtype,
            "past_key_names": PAST_KEY,
            "past_value_names": PAST_VALUE,
            "present_key_names": PRESENT_KEY,
            "present_value_names": PRESENT_VALUE,
            "max_seq_len": max_seq_len,
            "first_call_past_sequence_length": 0,
            "sliding_window": sliding_window_note(spec),
            **per_layer_kv_note(spec),
        },
        "genai_config": GENAI_CONFIG,
    }
