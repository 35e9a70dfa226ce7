"""The Core ML side of the delta layers' states (Qwen3.5's Gated DeltaNet), as
test_conv_state_coreml.py is for LFM2's conv layers: a delta layer's short conv keeps its state in
convState (q, k and v's channels side by side) and its recurrent matrices live in
recurrentState [delta layers, 1, value heads, key dim, value dim] fp16, both beside
keyCache/valueCache (which keep rows for the attention layers only); the manifest says which
states and row each layer uses; through the evaluator the fp32 package generates what the eager
decoder generates, across calls (prefill, decode steps, then several tokens in one call); a
reused state starts a new sequence at position 0 clean; the two parameters the converter does
not keep as consts of their own (dt_bias, fused into a linear's bias; A_log, folded into
-exp(A_log)) are recorded and read back; and the int4 package runs.

The decoder is the qwen3_5 family's tiny config (delta, attention, delta; 2 key heads feeding 4
value heads) with random weights: A_log, dt_bias and the norms' weights away from their
initial zeros / ones, so that a weight the converter folds away or merges is noticed."""

import math

import numpy as np
import pytest
import torch

import coreml_helpers as helpers
from mobilekit import families
from mobilekit.errors import ValidationFailed
from mobilekit.formats import coreml as coreml_format
from mobilekit.formats.coreml import (CAUSAL_MASK, CONV_STATE, INPUT_IDS, KEY_CACHE, LOGITS, RECURRENT_STATE,
                                      VALUE_CACHE, causal_mask)
from mobilekit.lowering.coreml import map_weights
from mobilekit.modeling import Decoder, EagerDecoder
from mobilekit.modeling.decoder import RMSNorm
from mobilekit.runtime.eager import EagerSession
from mobilekit.runtime.mil_evaluator import load_evaluator
from mobilekit.targets import ExportRequest, get

FAMILY = families.get("qwen3_5")
SPEC = FAMILY.spec_from_config(FAMILY.tiny_config)
SEQ = 32
DELTA_LAYERS = [0, 2]
PROMPT = [5, 17, 3, 88, 41, 9]  # 6 tokens: past the conv's 3-token state
NEW_TOKENS = 14
# prefill, single decode steps, then one call of several tokens continuing the same sequence
TURNS = [[12, 40, 7, 95, 1, 50], [8], [260], [33], [71, 2, 19, 400, 64], [3], [11]]
SECOND = [77, 77, 150, 6, 301, 28, 90]  # a second sequence: prefill 3, then single steps

KV_SHAPE = [1, 1, SPEC.num_kv_heads, SEQ, SPEC.head_dim]  # the one attention layer
CONV_SHAPE = [2, 1, SPEC.conv_channels, SPEC.conv_kernel - 1]
RECURRENT_SHAPE = [2, 1, SPEC.delta_value_heads, SPEC.delta_key_dim, SPEC.delta_value_dim]
# Core ML states are fp16 even in the fp32 package: the conv-state tests' bound on the logits,
# relative to the largest. Measured: 2.2% at the greedy run's last step, where a delta head's
# output is near zero and its gated norm scales the states' rounding up with it; under 0.4% elsewhere.
FP16_STATE_TOLERANCE = 3e-2


def delta_decoder() -> Decoder:
    torch.manual_seed(0)
    decoder = Decoder(SPEC).eval().requires_grad_(False)
    for p in decoder.parameters():
        torch.nn.init.normal_(p, std=0.3)
    gen = torch.Generator().manual_seed(1)
    for i in DELTA_LAYERS:
        delta = decoder.layers[i].delta
        # decay rates exp(A_log) from 0.05 to 1.5: some heads remember over the whole test
        delta.A_log.copy_(torch.empty(SPEC.delta_value_heads).uniform_(math.log(0.05), math.log(1.5), generator=gen))
        delta.dt_bias.copy_(torch.randn(SPEC.delta_value_heads, generator=gen) * 0.5)
    for m in decoder.modules():
        if isinstance(m, RMSNorm):
            m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=gen))
    return decoder


def eager_logits(decoder: Decoder, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        return EagerDecoder(decoder)(torch.tensor([tokens]))[0].numpy()


def last_rows(session, turns: list[list[int]]) -> np.ndarray:
    """The last row of logits of each call, one call per turn, from position 0."""
    session.reset()
    return np.stack([session.step(turn) for turn in turns])


def turn_ends(turns: list[list[int]]) -> list[int]:
    """The position of each turn's last token in the whole sequence."""
    return list(np.cumsum([len(t) for t in turns]) - 1)


def assert_close_with_fp16_states(got, want):
    np.testing.assert_allclose(got, want, atol=FP16_STATE_TOLERANCE * np.abs(want).max())


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """fp32 (the near-exact artefact) and int4 packages of the test decoder: scheme ->
    (bundle dir, artefact)."""
    exported = {}
    for scheme in ("fp32", "int4"):
        out = tmp_path_factory.mktemp(f"delta-coreml-{scheme}")
        artefact = get("coreml").export(ExportRequest(decoder=delta_decoder(), scheme=scheme, max_seq_len=SEQ,
                                                      bos_id=None, eos_ids=[], out_dir=out))
        exported[scheme] = (out, artefact)
    return exported


def open_session(packages, scheme: str):
    out, artefact = packages[scheme]
    return get("coreml").open_session(out, {"max_seq_len": SEQ, "io": artefact.io, "scheme": scheme})


def test_the_program_declares_the_delta_states(packages):
    from coremltools.converters.mil.mil import types

    out, artefact = packages["fp32"]
    program, _ = coreml_format.load_program(out / coreml_format.MODEL_FILE)
    main = program.functions["main"]
    states = {name: (list(var.shape), types.builtin_to_string(var.dtype)) for name, var in main.inputs.items()
              if name not in (INPUT_IDS, CAUSAL_MASK)}
    assert states == {KEY_CACHE: (KV_SHAPE, "fp16"), VALUE_CACHE: (KV_SHAPE, "fp16"),
                      CONV_STATE: (CONV_SHAPE, "fp16"), RECURRENT_STATE: (RECURRENT_SHAPE, "fp16")}
    # the recurrent state is read and written through the state ops, like the others
    updated = [op.inputs["state"].name for op in main.operations if op.op_type == "coreml_update_state"]
    assert sorted(updated) == sorted([KEY_CACHE, VALUE_CACHE, CONV_STATE, RECURRENT_STATE])
    assert {"name": RECURRENT_STATE, "dtype": "float16", "shape": RECURRENT_SHAPE} in \
        artefact.extra["spec_check"]["states"]


def test_check_spec_holds_the_recurrent_state_to_the_decoder(packages):
    out, _ = packages["fp32"]
    expected = {"layers": 1, "kv_heads": SPEC.num_kv_heads, "head_dim": SPEC.head_dim, "max_seq_len": SEQ,
                "vocab_size": SPEC.vocab_size, "conv_state": CONV_SHAPE}
    coreml_format.check_spec(out, "fp32", {**expected, "recurrent_state": RECURRENT_SHAPE})
    coreml_format.check_spec(out, "fp32")  # consistent among themselves
    wrong = [2, 1, SPEC.delta_value_heads, SPEC.delta_value_dim, SPEC.delta_key_dim + 1]
    with pytest.raises(ValidationFailed, match=r"state recurrentState shape \[2, 1, 4, 16, 16\] differs"):
        coreml_format.check_spec(out, "fp32", {**expected, "recurrent_state": wrong})
    with pytest.raises(ValidationFailed, match="states are"):
        coreml_format.check_spec(out, "fp32", {**expected, "recurrent_state": None})
    # the conv state of a delta layer is as wide as q, k and v together, not the hidden size
    with pytest.raises(ValidationFailed, match="state convState shape"):
        coreml_format.check_spec(out, "fp32", {**expected, "conv_state": [2, 1, SPEC.hidden_size, 3],
                                               "recurrent_state": RECURRENT_SHAPE})


def test_the_manifest_says_where_each_layers_states_live(packages):
    io = packages["fp32"][1].io
    first, attention, second = io["layer_states"]
    delta_states = {"conv": CONV_STATE, "recurrent": RECURRENT_STATE}
    assert (first["layer"], first["kind"], first["state"], first["index"]) == (0, "delta", delta_states, 0)
    assert (second["layer"], second["kind"], second["state"], second["index"]) == (2, "delta", delta_states, 1)
    assert first["shape"] == CONV_SHAPE[1:] and first["recurrent_shape"] == RECURRENT_SHAPE[1:]  # one row of each
    assert (attention["layer"], attention["kind"], attention["index"]) == (1, "kv", 0)
    reset = io["states"][2]["reset"]
    assert io["states"] == [
        {"name": KEY_CACHE, "dtype": "float16", "shape": KV_SHAPE},
        {"name": VALUE_CACHE, "dtype": "float16", "shape": KV_SHAPE},
        {"name": CONV_STATE, "dtype": "float16", "shape": CONV_SHAPE, "reset": reset},
        {"name": RECURRENT_STATE, "dtype": "float16", "shape": RECURRENT_SHAPE, "reset": reset},
    ]
    assert io["kv_cache"]["layers"] == 1 and io["kv_cache"]["attention_layers"] == [1]


def test_fp32_greedy_matches_the_eager_decoder(packages):
    """A 6-token prompt, then 14 tokens, each decode step carrying both states past the
    conv's width: the evaluator's greedy tokens are the eager decoder's, and its logits at
    every step are the eager decoder's over the whole sequence."""
    decoder = delta_decoder()
    want_tokens = EagerSession(decoder, SEQ).greedy(PROMPT, NEW_TOKENS)
    session = open_session(packages, "fp32")
    assert session.greedy(PROMPT, NEW_TOKENS) == want_tokens
    got = last_rows(session, [PROMPT] + [[t] for t in want_tokens[:-1]])
    want = eager_logits(decoder, PROMPT + want_tokens[:-1])[len(PROMPT) - 1:]
    assert_close_with_fp16_states(got, want)


def test_fp32_multi_turn_matches_the_eager_decoder(packages):
    """Prefill, decode steps, then a call of 5 tokens continuing the same sequence (the delta
    rule's chunked form from a carried state), then more steps."""
    want = eager_logits(delta_decoder(), sum(TURNS, []))[turn_ends(TURNS)]
    got = last_rows(open_session(packages, "fp32"), TURNS)
    assert_close_with_fp16_states(got, want)
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_the_fp32_graph_is_exact_with_fp32_states(packages):
    """The converted graph itself, the states widened to fp32 by the evaluator: the eager
    decoder's logits to float precision (the 1e-2 of the fp32 package is its fp16 states).
    Float precision here is a few 1e-5: a delta head whose output is near zero (RMS 5e-4 at
    some positions of this random decoder) is scaled back to unit RMS by its gated norm, and
    any rounding before it with it."""
    from mobilekit.runtime.coreml import EvaluatorSession

    out, _ = packages["fp32"]
    got = last_rows(EvaluatorSession(out / coreml_format.MODEL_FILE, SEQ, precision="fp32"), TURNS)
    want = eager_logits(delta_decoder(), sum(TURNS, []))[turn_ends(TURNS)]
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_a_reused_state_starts_a_new_sequence_at_position_0(packages):
    """A call at position 0 reads the conv and recurrent states as zeros, so the second
    sequence through the first one's state (its recurrentState holding the first sequence's
    matrices) gives the same logits as through a fresh state, and eager's."""
    out, _ = packages["fp32"]
    evaluator = load_evaluator(out / coreml_format.MODEL_FILE)

    def run(state, turns):
        rows, position = [], 0
        for chunk in turns:
            position += len(chunk)
            inputs = {INPUT_IDS: np.asarray([chunk], dtype=np.int32), CAUSAL_MASK: causal_mask(len(chunk), position)}
            rows.append(evaluator.predict(inputs, state)[LOGITS][0, -1])
        return np.stack(rows)

    second = [SECOND[:3]] + [[t] for t in SECOND[3:]]
    reused = evaluator.make_state()
    run(reused, TURNS)
    assert np.abs(reused.values[RECURRENT_STATE]).max() > 0  # what the second sequence must not read
    got = run(reused, second)
    np.testing.assert_array_equal(got, run(evaluator.make_state(), second))
    assert_close_with_fp16_states(got, eager_logits(delta_decoder(), SECOND)[2:])


def test_the_wrapper_module_resets_the_delta_states_at_position_0():
    """The same in torch: the converted module run eagerly, its buffers kept from one sequence
    to the next (fp32 states: only the wrapper's logic, to fp32 precision)."""
    decoder = delta_decoder()
    session = helpers.WrapperSession(decoder, SEQ, cache_dtype=torch.float32)
    np.testing.assert_allclose(last_rows(session, TURNS), eager_logits(decoder, sum(TURNS, []))[turn_ends(TURNS)],
                               atol=1e-4)
    second = [SECOND[:3]] + [[t] for t in SECOND[3:]]
    np.testing.assert_allclose(last_rows(session, second), eager_logits(decoder, SECOND)[2:], atol=1e-4)


def test_the_fused_and_folded_delta_weights_are_recorded_and_read_back(packages):
    """dt_bias, added to in_proj_a's output, becomes that linear's bias in the program (found
    through the linear); A_log reaches the program only as -exp(A_log), one const the export
    finds by value and records; everything else keeps its name and reads back exactly."""
    out, artefact = packages["fp32"]
    assert sorted(artefact.extra["folded_weights"]) == [f"layers.{i}.delta.A_log" for i in DELTA_LAYERS]
    restored, report = helpers.roundtrip_decoder(out / coreml_format.MODEL_FILE, SPEC)
    assert {f"layers.{i}.delta.dt_bias" for i in DELTA_LAYERS} <= set(report["mapped"])
    assert {f"layers.{i}.delta.conv.weight" for i in DELTA_LAYERS} <= set(report["mapped"])
    assert report["folded"] == artefact.extra["folded_weights"]
    original = delta_decoder().state_dict()
    for key, value in restored.state_dict().items():
        if key in report["folded"]:  # log(-(-exp(w))) in fp32
            torch.testing.assert_close(value, original[key], atol=1e-6, rtol=1e-6, msg=key)
        else:
            torch.testing.assert_close(value, original[key], atol=0, rtol=0, msg=key)


def test_int4_delta_model_runs_like_its_dequantized_weights_eagerly(packages):
    """int4 quantizes the delta layers' projections like any linear (those above the size
    threshold: in_proj_qkv, in_proj_z, out_proj; in_proj_a / in_proj_b have 4 rows), and the
    evaluator matches the decoder holding the package's own (dequantized) weights, run
    eagerly: both states are carried right under fp16 compute and quantization."""
    out, artefact = packages["int4"]
    weights = artefact.extra["spec_check"]["weights"]
    assert weights["quantized"].get("uint4", 0) > 0 and weights["int4_block_sizes"] == [32]
    program, _ = coreml_format.load_program(out / coreml_format.MODEL_FILE)
    dequantized, _ = helpers.roundtrip_decoder(out / coreml_format.MODEL_FILE, SPEC)
    sources, _ = map_weights(program, dequantized)
    for i in DELTA_LAYERS:
        for name in ("in_proj_qkv", "in_proj_z", "out_proj"):
            assert sources[f"layers.{i}.delta.{name}.weight"].op_type == "constexpr_blockwise_shift_scale", name
    got = last_rows(open_session(packages, "int4"), TURNS)
    want = eager_logits(dequantized, sum(TURNS, []))[turn_ends(TURNS)]
    np.testing.assert_allclose(got, want, atol=0.03 * np.abs(want).max())
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9


def test_the_evaluator_runs_the_ops_the_delta_rule_brings():
    """cumsum (the decay's running sum; exclusive and reverse too), range_1d (the positions
    of the causal masks and the spelled-out identity) and softplus, against values computed
    here by hand."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    from mobilekit.runtime import mil_evaluator as me

    def build(x, n):
        return (mb.cumsum(x=x, axis=1), mb.cumsum(x=x, axis=-1, exclusive=True),
                mb.cumsum(x=x, axis=1, reverse=True), mb.cumsum(x=x, axis=0, exclusive=True, reverse=True),
                mb.range_1d(start=np.int32(0), end=mb.squeeze(x=n), step=np.int32(1)), mb.softplus(x=x))

    prog = mb.program(input_specs=[mb.TensorSpec(shape=(2, 3), dtype=types.fp32),
                                   mb.TensorSpec(shape=(1,), dtype=types.int32)], opset_version=ct.target.iOS18)(build)
    evaluator = me.Evaluator(prog)
    x = np.array([[1.0, -2.0, 0.5], [3.0, 4.0, -1.0]], np.float32)
    outputs = evaluator.predict({"x": x, "n": np.array([5], np.int32)}, evaluator.make_state())
    inclusive, exclusive, reverse, both, positions, softplus = (outputs[n] for n in evaluator.output_names)
    np.testing.assert_allclose(inclusive, [[1, -1, -0.5], [3, 7, 6]])
    np.testing.assert_allclose(exclusive, [[0, 1, -1], [0, 3, 7]])
    np.testing.assert_allclose(reverse, [[-0.5, -1.5, 0.5], [6, 3, -1]])
    np.testing.assert_allclose(both, [[3, 4, -1], [0, 0, 0]])
    assert positions.dtype == np.int32 and positions.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(softplus, [[math.log1p(math.exp(v)) for v in row] for row in x.tolist()], rtol=1e-6)
