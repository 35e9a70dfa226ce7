"""The conv state on the ONNX target, beyond the generic session test of test_conv_state.py
(whose tiny conv + attention decoder this reuses): the graph and genai_config.json name the
conv state as ONNX Runtime GenAI's "lfm2" model type reads it, GenAI's own generation loop
(which feeds each present conv state back, zeros before the first token) decodes greedily
as the eager decoder does, and int4 quantizes the conv layer's projections while its taps,
elementwise multiplies, stay float."""

import json

import numpy as np
import pytest
import torch

from mobilekit.formats import layer_states
from mobilekit.modeling import EagerDecoder
from mobilekit.runtime.onnx import genai_greedy
from mobilekit.targets import ExportRequest, get
from test_conv_state import SEQ, SPEC, conv_decoder  # the same tiny decoder (pytest puts this folder on sys.path)

TARGET = get("onnx")
PROMPT = [5, 17, 3, 88, 41, 9]
NEW_TOKENS = 12
EOS = 2


def export(scheme, out):
    out.mkdir()
    artefact = TARGET.export(ExportRequest(decoder=conv_decoder(), scheme=scheme, max_seq_len=SEQ, bos_id=None,
                                           eos_ids=[EOS], out_dir=out))
    return out, artefact


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    return export("fp32", tmp_path_factory.mktemp("conv-onnx") / "fp32")


@pytest.fixture(scope="module")
def int4(tmp_path_factory):
    return export("int4", tmp_path_factory.mktemp("conv-onnx") / "int4")


def eager_greedy(prompt, new_tokens):
    decoder, ids = conv_decoder(), list(prompt)
    with torch.no_grad():
        for _ in range(new_tokens):
            ids.append(int(EagerDecoder(decoder)(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


def session_greedy(bundle, prompt, new_tokens):
    session = TARGET.open_session(bundle, {"max_seq_len": SEQ})
    session.reset()
    logits, tokens = session.step(prompt), []
    for _ in range(new_tokens):
        tokens.append(int(np.argmax(logits)))
        logits = session.step([tokens[-1]])
    return tokens


def test_graph_and_genai_config_name_the_conv_state_as_genai_reads_it(fp32):
    import onnx

    path, artefact = fp32
    graph = onnx.load(str(path / "model.onnx"), load_external_data=False).graph

    def shapes(values):
        return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}

    inputs, outputs = shapes(graph.input), shapes(graph.output)
    channels, kept = SPEC.hidden_size, SPEC.conv_kernel - 1
    # the conv layer (0) has a conv state and no key/value; the attention layer (1) the reverse
    assert inputs["past_key_values.0.conv_state"] == outputs["present.0.conv_state"] == [1, channels, kept]
    assert inputs["past_key_values.1.key"] == [1, SPEC.num_kv_heads, "past_sequence_length", SPEC.head_dim]
    assert outputs["present.1.value"] == [1, SPEC.num_kv_heads, "total_sequence_length", SPEC.head_dim]
    assert not {"past_key_values.0.key", "past_key_values.1.conv_state"} & set(inputs)

    model = json.loads((path / "genai_config.json").read_text())["model"]
    decoder = model["decoder"]
    assert model["type"] == "lfm2"  # GenAI's model type whose cache holds conv states
    assert decoder["layer_types"] == ["conv", "full_attention"]
    assert decoder["conv_cache_size"] == kept
    assert decoder["inputs"]["past_conv_names"] % 0 == "past_key_values.0.conv_state"
    assert decoder["outputs"]["present_conv_names"] % 0 == "present.0.conv_state"
    assert decoder["inputs"]["past_key_names"] % 1 in inputs and decoder["outputs"]["present_value_names"] % 1 in outputs

    # the manifest names each layer's past inputs and present outputs, and they are the graph's
    states = artefact.io["layer_states"]
    assert [{k: s[k] for k in described} for s, described in zip(states, layer_states(SPEC))] == layer_states(SPEC)
    assert [s["inputs"] for s in states] == [["past_key_values.0.conv_state"],
                                             ["past_key_values.1.key", "past_key_values.1.value"]]
    assert [name for s in states for name in s["inputs"]] == [v["name"] for v in artefact.io["inputs"][3:]]
    assert [name for s in states for name in s["outputs"]] == [v["name"] for v in artefact.io["outputs"][1:]]
    assert {v["name"]: v["shape"] for v in artefact.io["inputs"]} == inputs
    assert artefact.io["kv_cache"]["layers"] == 1


def test_genai_greedy_equals_eager_greedy(fp32):
    expected = eager_greedy(PROMPT, NEW_TOKENS)
    assert EOS not in expected  # else GenAI would stop early and the comparison be shorter
    assert genai_greedy(fp32[0], PROMPT, NEW_TOKENS) == expected


def test_int4_quantizes_the_conv_projections_and_keeps_the_taps_float(int4):
    import onnx
    from onnx import numpy_helper

    path, artefact = int4
    model = onnx.load(str(path / "model.onnx"))
    nodes = {n.name: n.op_type for n in model.graph.node}
    assert "MatMul" not in nodes.values()  # every linear, the conv layer's included, is MatMulNBits
    for proj in ("in_proj", "out_proj"):
        assert nodes[f"decoder.layers.0.conv.{proj}/MatMul_Q4"] == "MatMulNBits"
    # attention q/k/v/o, conv in/out, 3 MLP linears a layer, lm head
    assert artefact.extra["quantization"]["quantized_matmuls"] == 4 + 2 + 3 * 2 + 1

    # the conv taps [C, kernel] are still a float initializer, bit for bit
    taps = conv_decoder().layers[0].conv.conv.weight.detach().numpy()
    floats = [numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    assert any(f.shape == taps.shape and np.array_equal(f, taps) for f in floats), "the conv taps are not float"

    # the quantized graph runs under plain ONNX Runtime and under GenAI, to the same tokens
    tokens = session_greedy(path, PROMPT, NEW_TOKENS)
    if EOS in tokens:
        tokens = tokens[:tokens.index(EOS) + 1]
    assert genai_greedy(path, PROMPT, NEW_TOKENS) == tokens
