"""Qwen3.5's Gated DeltaNet state on the ONNX target, on the tiny qwen3_5 decoder of
test_delta_state.py (delta, attention, delta; random A_log, dt_bias and norm weights): the
graph and genai_config.json name each delta layer's conv and recurrent states as ONNX Runtime
GenAI reads them; plain ONNX Runtime, fed its presents back, gives the eager decoder's logits
over the whole sequence, across a prefill, single steps and a later multi-token call; GenAI's
own generation loop (its decoder-only recurrent state, zeros before the first token) decodes
greedily as the eager decoder does, across a second append too; and int4 quantizes the delta
layers' projections while their taps, decay parameters and norms stay float."""

import json

import numpy as np
import pytest
import torch

from mobilekit.formats import layer_states
from mobilekit.modeling import EagerDecoder
from mobilekit.runtime.onnx import genai_greedy
from mobilekit.targets import ExportRequest, get
from test_delta_state import SEQ, SPEC, delta_decoder  # the same tiny decoder (pytest puts this folder on sys.path)

TARGET = get("onnx")
PROMPT = [5, 17, 3, 88, 41, 9]  # longer than the conv's kernel - 1 (3)
NEW_TOKENS = 14  # carries both states well past the conv's window
EOS = 2
LOGIT_TOLERANCE = 1e-4
DELTA_PROJECTIONS = ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj")


def export(scheme, out):
    out.mkdir()
    artefact = TARGET.export(ExportRequest(decoder=delta_decoder(), scheme=scheme, max_seq_len=SEQ, bos_id=None,
                                           eos_ids=[EOS], out_dir=out))
    return out, artefact


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    return export("fp32", tmp_path_factory.mktemp("delta-onnx") / "fp32")


@pytest.fixture(scope="module")
def int4(tmp_path_factory):
    return export("int4", tmp_path_factory.mktemp("delta-onnx") / "int4")


def eager_logits(tokens):
    with torch.no_grad():
        return EagerDecoder(delta_decoder())(torch.tensor([tokens]))[0].numpy()


def eager_greedy(prompt, new_tokens):
    """Greedy continuation by full forwards over the whole sequence (no state carried)."""
    ids = list(prompt)
    for _ in range(new_tokens):
        ids.append(int(eager_logits(ids)[-1].argmax()))
    return ids[len(prompt):]


def session_greedy(bundle, prompt, new_tokens):
    session = TARGET.open_session(bundle, {"max_seq_len": SEQ})
    session.reset()
    logits, tokens = session.step(prompt), []
    for _ in range(new_tokens):
        tokens.append(int(np.argmax(logits)))
        logits = session.step([tokens[-1]])
    return tokens


def genai_turns(bundle, turns):
    """GenAI's greedy tokens over `turns`: [(tokens to append, tokens to generate), ...], all in
    one sequence, each append a multi-token call on top of the states the last turn left."""
    import onnxruntime_genai as og

    model = og.Model(str(bundle))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=sum(len(a) + n for a, n in turns))
    generator = og.Generator(model, params)
    generated = []
    for appended, count in turns:
        generator.append_tokens(list(appended))
        tokens = []
        for _ in range(count):
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
        generated.append(tokens)
    return generated


def test_graph_and_genai_config_name_both_states_as_genai_reads_them(fp32):
    import onnx

    path, artefact = fp32
    graph = onnx.load(str(path / "model.onnx"), load_external_data=False).graph

    def shapes(values):
        return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}

    inputs, outputs = shapes(graph.input), shapes(graph.output)
    conv = [1, SPEC.conv_channels, SPEC.conv_kernel - 1]
    matrix = [1, SPEC.delta_value_heads, SPEC.delta_key_dim, SPEC.delta_value_dim]
    for i in (0, 2):  # the delta layers: a conv state and a recurrent state each, no key/value
        assert inputs[f"past_key_values.{i}.conv_state"] == outputs[f"present.{i}.conv_state"] == conv
        assert inputs[f"past_key_values.{i}.recurrent_state"] == outputs[f"present.{i}.recurrent_state"] == matrix
    assert inputs["past_key_values.1.key"] == [1, SPEC.num_kv_heads, "past_sequence_length", SPEC.head_dim]
    assert not {"past_key_values.0.key", "past_key_values.1.conv_state",
                "past_key_values.1.recurrent_state"} & set(inputs)

    model = json.loads((path / "genai_config.json").read_text())["model"]
    decoder = model["decoder"]
    # GenAI's decoder-only types find a recurrent state (conv + matrix) by these names;
    # "lfm2" would not feed the matrix (formats.onnx.genai_type)
    assert model["type"] == "llama"
    assert decoder["inputs"]["past_conv_names"] % 0 == "past_key_values.0.conv_state"
    assert decoder["inputs"]["past_recurrent_names"] % 2 == "past_key_values.2.recurrent_state"
    assert decoder["outputs"]["present_conv_names"] % 2 == "present.2.conv_state"
    assert decoder["outputs"]["present_recurrent_names"] % 0 == "present.0.recurrent_state"
    assert "layer_types" not in decoder  # read by the "lfm2" type's cache only

    # the manifest names each layer's past inputs and present outputs, and they are the graph's
    states = artefact.io["layer_states"]
    assert [{k: s[k] for k in described} for s, described in zip(states, layer_states(SPEC))] == layer_states(SPEC)
    assert [s["inputs"] for s in states] == [
        ["past_key_values.0.conv_state", "past_key_values.0.recurrent_state"],
        ["past_key_values.1.key", "past_key_values.1.value"],
        ["past_key_values.2.conv_state", "past_key_values.2.recurrent_state"],
    ]
    assert [name for s in states for name in s["inputs"]] == [v["name"] for v in artefact.io["inputs"][3:]]
    assert [name for s in states for name in s["outputs"]] == [v["name"] for v in artefact.io["outputs"][1:]]
    assert {v["name"]: v["shape"] for v in artefact.io["inputs"]} == inputs
    assert {v["name"]: v["dtype"] for v in artefact.io["inputs"]}["past_key_values.0.recurrent_state"] == "float32"
    assert artefact.io["kv_cache"]["layers"] == 1


def test_session_greedy_and_logits_equal_eager(fp32):
    expected = eager_greedy(PROMPT, NEW_TOKENS)
    assert session_greedy(fp32[0], PROMPT, NEW_TOKENS) == expected

    # the logits at every position after the prompt, against a full forward over the sequence
    tokens = PROMPT + expected
    session = TARGET.open_session(fp32[0], {"max_seq_len": SEQ})
    session.reset()
    rows = [session.step(PROMPT)] + [session.step([t]) for t in expected[:-1]]
    np.testing.assert_allclose(np.stack(rows), eager_logits(tokens)[len(PROMPT) - 1:-1], atol=LOGIT_TOLERANCE, rtol=0)


def test_a_later_multi_token_call_continues_the_same_sequence(fp32):
    """Prefill, single steps, then a chunk of several tokens on top of the carried states (a
    second user turn), then single steps again; then a new sequence in the same session,
    which must start from zero states."""
    first = [5, 17, 3, 88, 41, 9, 60, 2, 33, 71, 400, 12, 250, 77, 301, 4, 19, 90, 8]
    calls = [6, 1, 1, 1, 1, 5, 1, 1, 1, 1]  # positions 0-5, 6..9, 10-14, 15..18
    second = [12, 12, 40, 7, 95, 1, 50]
    session = TARGET.open_session(fp32[0], {"max_seq_len": SEQ})
    session.reset()
    got, ends, start = [], [], 0
    for n in calls:
        got.append(session.step(first[start:start + n]))
        start += n
        ends.append(start - 1)
    assert start == len(first)
    np.testing.assert_allclose(np.stack(got), eager_logits(first)[ends], atol=LOGIT_TOLERANCE, rtol=0)

    session.reset()
    again = [session.step(second[:3])] + [session.step([t]) for t in second[3:]]
    np.testing.assert_allclose(np.stack(again), eager_logits(second)[2:], atol=LOGIT_TOLERANCE, rtol=0)


def test_genai_greedy_equals_eager_greedy(fp32):
    expected = eager_greedy(PROMPT, NEW_TOKENS)
    assert EOS not in expected  # else GenAI would stop early and the comparison be shorter
    assert genai_greedy(fp32[0], PROMPT, NEW_TOKENS) == expected


def test_genai_runs_a_second_append_from_the_states_the_first_left(fp32):
    """GenAI's recurrent state across appends: the second append runs several tokens at once
    from the states the first one left, then GenAI decodes from there. An append after
    generated tokens runs too (GenAI leaves the last generated token out of every state
    then: tests/targets/test_onnx.py compares that case with GenAI's own builder models)."""
    turn = [33, 71, 400, 12]
    expected = eager_greedy(PROMPT + turn, NEW_TOKENS)
    assert EOS not in expected
    assert genai_turns(fp32[0], [(PROMPT, 0), (turn, NEW_TOKENS)]) == [[], expected]
    chat = genai_turns(fp32[0], [(PROMPT, 3), (turn, NEW_TOKENS), ([7, 8], 2)])
    assert [len(tokens) for tokens in chat] == [3, NEW_TOKENS, 2]


def test_int4_quantizes_the_delta_projections_and_keeps_the_recurrence_float(int4):
    import onnx
    from onnx import numpy_helper

    path, artefact = int4
    model = onnx.load(str(path / "model.onnx"))
    weights = {i.name for i in model.graph.initializer}
    nodes = {n.name: n.op_type for n in model.graph.node}
    for i in (0, 2):
        for proj in DELTA_PROJECTIONS:
            assert nodes[f"decoder.layers.{i}.delta.{proj}/MatMul_Q4"] == "MatMulNBits"
    # every MatMul left is the recurrence's own (activations on both sides), none a linear's
    assert not [n.name for n in model.graph.node if n.op_type == "MatMul" and set(n.input) & weights]
    # 5 projections a delta layer, attention q/k/v/o/gate, 3 MLP linears a layer, lm head
    assert artefact.extra["quantization"]["quantized_matmuls"] == 5 * 2 + 5 + 3 * 3 + 1

    # the conv taps, dt_bias and the gated norm's weight are still float, bit for bit, and so
    # is A_log, as the -exp(A_log) that export folds it into (to float32 rounding)
    floats = [numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    delta = delta_decoder().layers[0].delta
    for name, value, rtol in (("conv taps", delta.conv.weight, 0), ("dt_bias", delta.dt_bias, 0),
                              ("norm", delta.norm.weight, 0), ("-exp(A_log)", -delta.A_log.exp(), 1e-6)):
        value = value.detach().numpy()
        assert any(f.shape == value.shape and np.allclose(f, value, rtol=rtol, atol=0) for f in floats), \
            f"the {name} are not float"
    assert {i.name: i.type.tensor_type.elem_type for i in model.graph.input}[
        "past_key_values.0.recurrent_state"] == onnx.TensorProto.FLOAT

    # the quantized graph runs under plain ONNX Runtime and under GenAI, to the same tokens
    tokens = session_greedy(path, PROMPT, NEW_TOKENS)
    if EOS in tokens:
        tokens = tokens[:tokens.index(EOS) + 1]
    assert genai_greedy(path, PROMPT, NEW_TOKENS) == tokens
