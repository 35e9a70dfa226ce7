"""The Core ML side of the conv state (issue 15), beyond the generic cell of
test_conv_state.py: the conv layers' states are one Core ML state, convState [conv layers, 1,
hidden, kernel-1] fp16, beside keyCache/valueCache (which keep rows for the attention layers
only); the manifest says which state and row each layer uses; a reused state starts a new
sequence at position 0 clean; the weights read in slices (the taps) are recorded and read
back; and the int4 package runs."""

import dataclasses

import numpy as np
import pytest
import torch
from test_conv_state import FIRST, SECOND, SEQ, SPEC, conv_decoder, eager_logits, stepped_logits

import coreml_helpers as helpers
from mobilekit.errors import ExportError, ValidationFailed
from mobilekit.formats import coreml as coreml_format
from mobilekit.formats.coreml import CAUSAL_MASK, CONV_STATE, INPUT_IDS, KEY_CACHE, LOGITS, VALUE_CACHE, causal_mask
from mobilekit.lowering.coreml import CoreMLDecoder
from mobilekit.modeling import Decoder
from mobilekit.runtime.mil_evaluator import load_evaluator
from mobilekit.targets import ExportRequest, get

CONV_SHAPE = [1, 1, SPEC.hidden_size, SPEC.conv_kernel - 1]  # one conv layer
KV_SHAPE = [1, 1, SPEC.num_kv_heads, SEQ, SPEC.head_dim]  # one attention layer: no KV rows for the conv layer


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """fp32 (the near-exact artefact) and int4 packages of the test decoder: scheme ->
    (bundle dir, artefact)."""
    exported = {}
    for scheme in ("fp32", "int4"):
        out = tmp_path_factory.mktemp(f"conv-coreml-{scheme}")
        artefact = get("coreml").export(ExportRequest(decoder=conv_decoder(), scheme=scheme, max_seq_len=SEQ,
                                                      bos_id=None, eos_ids=[2], out_dir=out))
        exported[scheme] = (out, artefact)
    return exported


@pytest.fixture(scope="module")
def expected():
    decoder = conv_decoder()
    return eager_logits(decoder, FIRST), eager_logits(decoder, SECOND)


def test_the_program_declares_the_conv_state(packages):
    from coremltools.converters.mil.mil import types

    out, artefact = packages["fp32"]
    program, _ = coreml_format.load_program(out / coreml_format.MODEL_FILE)
    main = program.functions["main"]
    states = {name: (list(var.shape), types.builtin_to_string(var.dtype)) for name, var in main.inputs.items()
              if name not in (INPUT_IDS, CAUSAL_MASK)}
    assert states == {KEY_CACHE: (KV_SHAPE, "fp16"), VALUE_CACHE: (KV_SHAPE, "fp16"), CONV_STATE: (CONV_SHAPE, "fp16")}
    # the conv state is read and written through the state ops, like the KV cache
    updated = [op.inputs["state"].name for op in main.operations if op.op_type == "coreml_update_state"]
    assert sorted(updated) == sorted([KEY_CACHE, VALUE_CACHE, CONV_STATE])
    assert {"name": CONV_STATE, "dtype": "float16", "shape": CONV_SHAPE} in artefact.extra["spec_check"]["states"]


def test_check_spec_holds_the_conv_state_to_the_decoder(packages):
    out, _ = packages["fp32"]
    expected = {"layers": 1, "kv_heads": SPEC.num_kv_heads, "head_dim": SPEC.head_dim, "max_seq_len": SEQ,
                "vocab_size": SPEC.vocab_size}
    coreml_format.check_spec(out, "fp32", {**expected, "conv_state": CONV_SHAPE})
    wrong = [1, 1, SPEC.hidden_size, SPEC.conv_kernel]
    with pytest.raises(ValidationFailed, match=rf"state convState shape \[1, 1, {SPEC.hidden_size}, 2\] differs"):
        coreml_format.check_spec(out, "fp32", {**expected, "conv_state": wrong})
    with pytest.raises(ValidationFailed, match="states are"):
        coreml_format.check_spec(out, "fp32", {**expected, "conv_state": None})


def test_the_manifest_says_where_each_layers_state_lives(packages):
    io = packages["fp32"][1].io
    conv, kv = io["layer_states"]
    assert (conv["layer"], conv["kind"], conv["state"], conv["index"]) == (0, "conv", CONV_STATE, 0)
    assert conv["shape"] == CONV_SHAPE[1:]  # one row of convState
    assert (kv["layer"], kv["kind"], kv["state"], kv["index"]) == (1, "kv", {"key": KEY_CACHE, "value": VALUE_CACHE}, 0)
    assert io["states"] == [
        {"name": KEY_CACHE, "dtype": "float16", "shape": KV_SHAPE},
        {"name": VALUE_CACHE, "dtype": "float16", "shape": KV_SHAPE},
        {"name": CONV_STATE, "dtype": "float16", "shape": CONV_SHAPE, "reset": io["states"][2]["reset"]},
    ]
    assert io["kv_cache"]["layers"] == 1 and io["kv_cache"]["attention_layers"] == [1]


def test_a_reused_state_starts_a_new_sequence_at_position_0(packages, expected):
    """Core ML apps make a fresh state per conversation, but nothing forces them to: a call at
    position 0 reads the conv state as zeros, so the second sequence through the first one's
    state (its convState holding the first sequence's last inputs) gives the same logits as
    through a fresh state, and eager's."""
    out, _ = packages["fp32"]
    evaluator = load_evaluator(out / coreml_format.MODEL_FILE)

    def run(state, tokens, prefill):
        rows, position = [], 0
        for chunk in [tokens[:prefill]] + [[t] for t in tokens[prefill:]]:
            position += len(chunk)
            inputs = {INPUT_IDS: np.asarray([chunk], dtype=np.int32), CAUSAL_MASK: causal_mask(len(chunk), position)}
            rows.append(evaluator.predict(inputs, state)[LOGITS][0, -1])
        return np.stack(rows)

    reused = evaluator.make_state()
    run(reused, FIRST, 5)
    assert np.abs(reused.values[CONV_STATE]).max() > 0  # what the second sequence must not read
    second = run(reused, SECOND, 3)
    np.testing.assert_array_equal(second, run(evaluator.make_state(), SECOND, 3))
    want = expected[1][2:]
    np.testing.assert_allclose(second, want, atol=3e-2 * np.abs(want).max())


def test_the_wrapper_module_resets_the_conv_state_at_position_0(expected):
    """The same in torch: the converted module run eagerly, its buffers kept from one sequence
    to the next (fp32 states: only the wrapper's logic, to fp32 precision)."""
    session = helpers.WrapperSession(conv_decoder(), SEQ, cache_dtype=torch.float32)
    stepped_logits(session, FIRST, 5)
    np.testing.assert_allclose(stepped_logits(session, SECOND, 3), expected[1][2:], atol=1e-4)


def test_the_conv_weights_keep_their_names_and_read_back_exactly(packages):
    """CausalConv uses its taps and bias whole, so each is a const of its own name in the
    program (a slice of a weight would be folded into a nameless const)."""
    out, _ = packages["fp32"]
    restored, report = helpers.roundtrip_decoder(out / coreml_format.MODEL_FILE, SPEC)
    assert {"layers.0.conv.conv.weight", "layers.0.conv.conv.bias"} <= set(report["mapped"])
    original = conv_decoder().state_dict()
    for key, value in restored.state_dict().items():
        torch.testing.assert_close(value, original[key], atol=0, rtol=0, msg=key)


def test_int4_conv_model_runs_like_its_dequantized_weights_eagerly(packages):
    """int4 on a conv model: the evaluator matches the decoder holding the package's own
    (dequantized int4) weights, run eagerly, so the conv state is carried right under
    quantization too (against the float decoder, random tiny weights at int4 flip too many
    near-tied argmaxes to test anything)."""
    out, artefact = packages["int4"]
    weights = artefact.extra["spec_check"]["weights"]
    assert weights["quantized"].get("uint4", 0) > 0 and weights["int4_block_sizes"] == [32]
    dequantized, _ = helpers.roundtrip_decoder(out / coreml_format.MODEL_FILE, SPEC)
    session = get("coreml").open_session(out, {"max_seq_len": SEQ, "io": artefact.io, "scheme": "int4"})
    got = np.concatenate([stepped_logits(session, FIRST, 5), stepped_logits(session, SECOND, 3)])
    want = np.concatenate([eager_logits(dequantized, FIRST)[4:], eager_logits(dequantized, SECOND)[2:]])
    np.testing.assert_allclose(got, want, atol=0.03 * np.abs(want).max())
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9


def test_interleaved_layers_use_their_own_rows_in_fp16(tmp_path):
    """conv, attention, conv, attention: each kind's rows in layer order (convState rows 0 and
    1 written by slice updates, two KV rows for four layers), under the fp16 compute apps run."""
    spec = dataclasses.replace(SPEC, num_layers=4, layer_types=("conv", "full", "conv", "full"))
    decoder = conv_decoder(spec)
    exporter = get("coreml")
    artefact = exporter.export(ExportRequest(decoder=decoder, scheme="fp16", max_seq_len=SEQ, bos_id=None,
                                             eos_ids=[2], out_dir=tmp_path))
    assert [(s["layer"], s["index"]) for s in artefact.io["layer_states"]] == [(0, 0), (1, 0), (2, 1), (3, 1)]
    assert [t["shape"][0] for t in artefact.io["states"]] == [2, 2, 2]
    session = exporter.open_session(tmp_path, {"max_seq_len": SEQ, "io": artefact.io, "scheme": "fp16"})
    for tokens, prefill in ((FIRST, 5), (SECOND, 3)):
        got, want = stepped_logits(session, tokens, prefill), eager_logits(decoder, tokens)[prefill - 1:]
        np.testing.assert_allclose(got, want, atol=1e-2 * np.abs(want).max())
        assert (got.argmax(-1) == want.argmax(-1)).all()


def test_a_decoder_without_attention_layers_is_refused():
    """swift-transformers takes a model for a stateful one by its keyCache/valueCache."""
    spec = dataclasses.replace(SPEC, layer_types=("conv", "conv"))
    with pytest.raises(ExportError, match="at least one attention layer"):
        CoreMLDecoder(Decoder(spec), SEQ)
