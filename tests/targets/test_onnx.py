"""The ONNX target on a tiny Llama: each scheme exported by the target into a folder, run
through plain ONNX Runtime (the validation Session: prefill, then one token per step with
past/present) and through ONNX Runtime GenAI (the app runtime), against the transformers
reference. The real SmolLM2 tests are marked slow."""

import json
import shutil

import numpy as np
import pytest
import torch

from mobilekit import checkpoint, quantize, validate
from mobilekit.errors import SchemeNotSupported
from mobilekit.targets import ExportRequest, get


SEQ = 128
TARGET = get("onnx")
SCHEMES = TARGET.schemes


def export_bundle(ckpt, scheme, out, max_seq_len=SEQ):
    """Export `ckpt` at `scheme` into `out`, with the tokenizer files the pipeline would copy."""
    tokenizer = ckpt.load_tokenizer()
    out.mkdir(parents=True)
    artefact = TARGET.export(ExportRequest(
        decoder=ckpt.build_decoder(), scheme=scheme, max_seq_len=max_seq_len, bos_id=tokenizer.bos_token_id,
        eos_ids=sorted(validate.stop_ids(tokenizer, ckpt.config)), out_dir=out,
    ))
    for f in ckpt.tokenizer_files():
        shutil.copy(f, out / f.name)
    return out, artefact


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    return checkpoint.resolve(str(tiny_llama_dir))


@pytest.fixture(scope="module")
def reference(tiny):
    return validate.compute_reference(tiny.load_reference(), tiny.load_tokenizer(), SEQ)


@pytest.fixture(scope="module")
def bundles(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    return {scheme: export_bundle(tiny, scheme, root / scheme) for scheme in SCHEMES}


def session(bundle):
    return TARGET.open_session(bundle[0], {"max_seq_len": SEQ})


@pytest.mark.parametrize("scheme", SCHEMES)
def test_logits_within_the_schemes_budget(bundles, reference, scheme):
    metrics = validate.measure(session(bundles[scheme]), reference)
    assert validate.check(metrics, quantize.budget_for(scheme)) == []
    if scheme == "fp32":
        assert metrics.max_abs_logit_error <= quantize.FP32_BUDGET.max_abs_logit_error
        assert metrics.greedy_match == 1.0


def test_any_split_of_prefill_and_decode_matches(bundles, tiny, reference):
    """P=0 with T=1, and a multi-token chunk after a past (T>1, P>0): the mask from shapes."""
    ids = reference.eval_ids[:24]
    s = session(bundles["fp32"])
    s.reset()
    got = [s.step(ids[:1]), s.step(ids[1:9]), s.step(ids[9:10]), s.step(ids[10:24])]
    want = reference.eval_logits[[0, 8, 9, 23]]
    assert np.abs(np.stack(got) - want).max() <= quantize.FP32_BUDGET.max_abs_logit_error


def test_genai_greedy_equals_reference(bundles, tiny):
    """ONNX Runtime GenAI on the fp32 folder, with nothing but genai_config.json added."""
    tokenizer = tiny.load_tokenizer()
    prompt = "Rivers carry water"
    pieces = []
    result = TARGET.generate(bundles["fp32"][0], {}, prompt, 12, pieces.append)

    ids = tokenizer(prompt)["input_ids"]
    stops = sorted(validate.stop_ids(tokenizer, tiny.config))
    out = tiny.load_reference().generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                         max_new_tokens=12, do_sample=False, eos_token_id=stops, pad_token_id=stops[0])
    expected = out[0, len(ids):].tolist()
    assert result.prompt_tokens == len(ids)
    assert result.token_ids == expected
    assert "".join(pieces) == result.text == tokenizer.decode([t for t in expected if t not in stops])
    assert result.decode_tokens_per_s > 0 and result.time_to_first_token_s > 0
    assert result.runtime == "ONNX Runtime GenAI"


def genai_chat(folder, turns, max_length=64) -> list[int]:
    """The sequence GenAI holds after `turns` [(tokens to append, tokens to generate), ...],
    each append after generated tokens, as a chat app's turns are."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=max_length)
    generator = og.Generator(model, params)
    for appended, count in turns:
        generator.append_tokens(appended)
        for _ in range(count):
            generator.generate_next_token()
    return [int(t) for t in generator.get_sequence(0)]


def test_genai_appends_after_generated_tokens_as_its_own_builder_models_do(bundles, tiny_llama_dir, tmp_path):
    """A second turn appended after generated tokens. GenAI 0.18 does not feed the last
    generated token then: the appended ones come one position late, attention_mask one wider
    than the cache (the graph once failed here: "inconsistent total_sequence_length"). The
    bundle runs it, and holds the same sequence as ONNX Runtime GenAI's own model builder's
    fp32 model of the same checkpoint, over three turns."""
    import subprocess
    import sys

    builder = tmp_path / "builder"
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(tiny_llama_dir),
                    "-o", str(builder), "-p", "fp32", "-e", "cpu", "-c", str(tmp_path / "cache")],
                   check=True, capture_output=True)
    turns = [([5, 17, 3, 88, 41, 9], 5), ([33, 71, 400, 12], 5), ([7, 8], 3)]
    ours = genai_chat(bundles["fp32"][0], turns)
    assert len(ours) == 6 + 5 + 4 + 5 + 2 + 3
    assert ours == genai_chat(builder, turns)


@pytest.mark.parametrize("scheme", ["fp16", "int4"])
def test_genai_runs_every_scheme(bundles, scheme):
    result = TARGET.generate(bundles[scheme][0], {}, "Rivers carry water", 6, lambda _t: None)
    assert len(result.token_ids) == 6


def test_unsupported_scheme_names_the_valid_ones(tmp_path, tiny):
    with pytest.raises(SchemeNotSupported, match="fp32, fp16, int8, int4"):
        TARGET.export(ExportRequest(decoder=tiny.build_decoder(), scheme="int2", max_seq_len=SEQ, bos_id=None,
                                    eos_ids=[2], out_dir=tmp_path))
    assert not any(tmp_path.iterdir())


def test_files_external_data_and_io_contract(bundles):
    import onnx

    path, artefact = bundles["fp32"]
    assert artefact.files == ["model.onnx", "model.onnx.data", "genai_config.json"]
    assert all((path / f).is_file() for f in artefact.files)
    model = onnx.load(str(path / "model.onnx"), load_external_data=False)
    weights = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert weights and {e.value for t in weights for e in t.external_data if e.key == "location"} == {"model.onnx.data"}

    def described(values):
        return [
            {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
             "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]}
            for v in values
        ]

    assert described(model.graph.input) == artefact.io["inputs"]
    assert described(model.graph.output) == artefact.io["outputs"]
    assert artefact.io["inputs"][3] == {"name": "past_key_values.0.key", "dtype": "float32",
                                        "shape": [1, 2, "past_sequence_length", 16]}
    assert artefact.io["outputs"][1]["shape"] == [1, 2, "total_sequence_length", 16]
    assert artefact.io["kv_cache"]["layers"] == 2 and artefact.io["kv_cache"]["dtype"] == "float32"
    assert set(artefact.extra["timings"]) >= {"torch_export_s", "onnx_translate_s", "save_s"}
    assert artefact.extra["genai_config"] == "genai_config.json"


def test_genai_config(bundles, tiny):
    config = json.loads((bundles["fp32"][0] / "genai_config.json").read_text())
    model, decoder = config["model"], config["model"]["decoder"]
    assert model["context_length"] == SEQ and model["vocab_size"] == 512
    assert model["eos_token_id"] == 2 and model["bos_token_id"] == tiny.load_tokenizer().bos_token_id
    assert decoder["inputs"]["position_ids"] == "position_ids"
    assert decoder["inputs"]["past_key_names"] == "past_key_values.%d.key"
    assert decoder["outputs"]["present_value_names"] == "present.%d.value"
    assert (decoder["num_key_value_heads"], decoder["num_attention_heads"], decoder["head_size"]) == (2, 4, 16)
    assert config["search"]["past_present_share_buffer"] is False and config["search"]["do_sample"] is False


def test_fp16_weights_and_cache(bundles):
    import onnxruntime as ort

    path, artefact = bundles["fp16"]
    assert artefact.io["kv_cache"]["dtype"] == "float16"
    inputs = {i.name: i.type for i in ort.InferenceSession(str(path / "model.onnx")).get_inputs()}
    assert inputs["past_key_values.1.value"] == "tensor(float16)"
    assert (path / "model.onnx.data").stat().st_size < 0.55 * (bundles["fp32"][0] / "model.onnx.data").stat().st_size


@pytest.mark.parametrize("scheme,bits", [("int8", 8), ("int4", 4)])
def test_every_matmul_weight_is_quantized(bundles, scheme, bits):
    import onnx

    path, artefact = bundles[scheme]
    model = onnx.load(str(path / "model.onnx"), load_external_data=False)
    weights = {t.name for t in model.graph.initializer}
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 2 * 7 + 1  # q k v o gate up down per layer, and the lm head
    assert any(n.name.startswith("decoder.lm_head") for n in nbits)
    assert all({a.name: a.i for a in n.attribute}["bits"] == bits for n in nbits)
    assert all({a.name: a.i for a in n.attribute}["block_size"] == 32 for n in nbits)
    assert not [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    assert artefact.extra["quantization"]["bits"] == bits
    sizes = {s: (bundles[s][0] / "model.onnx.data").stat().st_size for s in SCHEMES}
    assert sizes["int4"] < sizes["int8"] < sizes["fp32"]


def test_quantizing_a_saved_model_matches_export(bundles, tmp_path):
    """quantize_model over a saved fp32 bundle, rewritten in place with its external data,
    gives the same model the export path quantizes in memory."""
    import onnx

    from mobilekit.targets.onnx import _save, quantize_model

    folder = tmp_path / "q"
    shutil.copytree(bundles["fp32"][0], folder)
    model, facts = quantize_model(onnx.load(str(folder / "model.onnx"), load_external_data=True), "int4")
    _save(model, folder / "model.onnx")
    assert facts["method"] == "MatMulNBits" and facts["bits"] == 4
    assert sorted(p.name for p in folder.glob("model.onnx*")) == ["model.onnx", "model.onnx.data"]
    ids = list(range(5, 25))
    a, b = session((folder, None)), session(bundles["int4"])
    np.testing.assert_array_equal(a.step(ids), b.step(ids))


def test_export_wrapper_runs_eagerly_like_the_decoder(tiny):
    """The wrapper and its custom ops (which export only sees through their fake kernels)
    compute the decoder's math in eager mode too: prefill, then one step on the presents."""
    from mobilekit.modeling import EagerDecoder
    from mobilekit.lowering.onnx import OnnxDecoder, onnx_modules, onnx_ops

    onnx_ops()
    decoder = tiny.build_decoder()
    spec = decoder.spec
    ids = torch.tensor([[5, 9, 11, 40, 7, 3]])
    want = EagerDecoder(decoder)(ids)
    with torch.no_grad(), onnx_modules(decoder):
        module = OnnxDecoder(decoder, SEQ)
        empty = [torch.zeros(1, spec.num_kv_heads, 0, spec.head_dim)] * (2 * spec.num_layers)
        logits, *present = module(ids[:, :5], torch.ones(1, 5, dtype=torch.long), torch.arange(5)[None], empty)
        step, *_ = module(ids[:, 5:], torch.ones(1, 6, dtype=torch.long), torch.tensor([[5]]), present)
    torch.testing.assert_close(torch.cat([logits, step], 1), want, atol=1e-5, rtol=1e-5)


def test_export_leaves_the_callers_decoder_as_it_was(tiny, tmp_path):
    from mobilekit.modeling.decoder import RMSNorm, Rotary

    decoder = tiny.build_decoder()
    before = [type(m) for m in decoder.modules()]
    TARGET.export(ExportRequest(decoder=decoder, scheme="fp32", max_seq_len=SEQ, bos_id=None, eos_ids=[2],
                                out_dir=tmp_path))
    assert [type(m) for m in decoder.modules()] == before
    assert RMSNorm in before and Rotary in before


def test_missing_runtime_names_the_extra(monkeypatch):
    from mobilekit.errors import TargetUnavailable

    monkeypatch.setitem(__import__("sys").modules, "onnxruntime_genai", None)
    with pytest.raises(TargetUnavailable, match=r"pip install 'mobilekit\[onnx\]'"):
        TARGET.check_available()


def test_runtime_versions():
    versions = TARGET.runtime_versions()
    assert {"onnx", "onnxruntime", "onnxruntime-genai", "torch"} <= set(versions)


# --- partial rotary, softcap and sliding windows: the opset-23 nodes against the reference ----


def _op_session(module, args):
    """`module` (calling the mobilekit_onnx ops) through torch.onnx with the target's
    translations, in an ONNX Runtime CPU session; returns (session, model proto)."""
    import onnxruntime as ort

    from mobilekit.lowering.onnx import onnx_ops
    from mobilekit.targets.onnx import OPSET

    program = torch.onnx.export(module.eval(), args, dynamo=True, opset_version=OPSET, optimize=False, verbose=False,
                                custom_translation_table=onnx_ops()["translations"])
    model = program.model_proto
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]), model


def _run(session, *arrays):
    return session.run(None, {i.name: np.asarray(a) for i, a in zip(session.get_inputs(), arrays)})


def _attrs(node):
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


@pytest.mark.parametrize("width", [16, 8, 4])
def test_rotary_node_rotates_only_the_first_rotary_lanes(width):
    """Partial rotary (GPT-NeoX, Phi-2, StableLM): RotaryEmbedding's rotary_embedding_dim
    rotates the first `width` lanes, half-split within them, and passes the rest through."""
    from mobilekit.modeling.decoder import Rotary
    from mobilekit.lowering.onnx import onnx_ops

    onnx_ops()

    class Rotate(torch.nn.Module):
        def forward(self, x, cos, sin):
            return torch.ops.mobilekit_onnx.rotary(x, cos, sin)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 5, 4, 16, generator=gen)
    inv_freq = 1.0 / 10000 ** (torch.arange(0, width, 2).float() / width)
    angles = torch.outer(torch.arange(7, 12).float(), inv_freq).repeat(1, 2)
    cos, sin = angles.cos()[:, None], angles.sin()[:, None]  # [T,1,width], as the decoder passes them
    want = Rotary()(x, cos, sin).numpy()
    np.testing.assert_allclose(Rotate()(x, cos, sin).numpy(), want, atol=1e-6)

    session, model = _op_session(Rotate(), (x, cos, sin))
    (node,) = [n for n in model.graph.node if n.op_type == "RotaryEmbedding"]
    assert (_attrs(node).get("rotary_embedding_dim") or 16) == width  # 0 = the whole head
    (got,) = _run(session, x, cos, sin)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_array_equal(got[..., width:], x[..., width:].numpy())
    if width < 16:
        assert np.abs(got[..., :width] - x[..., :width].numpy()).max() > 0.1


@pytest.mark.parametrize("softcap,window", [(3.0, None), (None, 4), (3.0, 4)])
def test_attention_node_softcap_and_window_match_the_reference(softcap, window):
    """Gemma 2's score softcap (capped before the mask) and a sliding window with a past
    (P=7, T=5, GQA): ONNX Runtime's Attention node and the custom op's eager math both equal
    decoder.attention; the windowed mask is decoder.attention_mask's."""
    from mobilekit.modeling import DecoderSpec
    from mobilekit.modeling.decoder import attention, attention_mask
    from mobilekit.lowering.onnx import additive_masks, gap_pads, onnx_ops

    onnx_ops()
    p, t, heads, kv_heads, hd, scale = 7, 5, 4, 2, 16, 0.2
    spec = DecoderSpec(vocab_size=8, hidden_size=64, num_layers=1, num_heads=heads, num_kv_heads=kv_heads,
                       head_dim=hd, intermediate_size=8, max_position_embeddings=64, sliding_window=window,
                       attention_softcap=softcap)
    (mask,) = additive_masks(spec, t, torch.ones(1, p + t, dtype=torch.long), torch.float32).values()
    allowed = attention_mask(torch.arange(p, p + t), torch.arange(p + t), window)
    assert torch.equal(mask == 0, allowed)

    gen = torch.Generator().manual_seed(0)
    q = 2 * torch.randn(1, t, heads, hd, generator=gen)
    k = 2 * torch.randn(1, t, kv_heads, hd, generator=gen)
    v = torch.randn(1, t, kv_heads, hd, generator=gen)
    past_k = 2 * torch.randn(1, kv_heads, p, hd, generator=gen)
    past_v = torch.randn(1, kv_heads, p, hd, generator=gen)
    keys, values = torch.cat([past_k.transpose(1, 2), k], 1), torch.cat([past_v.transpose(1, 2), v], 1)
    want = attention(q, keys, values, allowed, scale, softcap)
    # the case bites: without the cap, or without the window, the result is another one
    plain = attention(q, keys, values, attention_mask(torch.arange(p, p + t), torch.arange(p + t), None), scale)
    assert (want - plain).abs().max() > 0.05

    class Attend(torch.nn.Module):
        def forward(self, q, k, v, mask, past_k, past_v):
            return torch.ops.mobilekit_onnx.attention(q, k, v, mask, past_k, past_v, gap_pads(0), scale,
                                                      softcap or 0.0)

    args = (q, k, v, mask, past_k, past_v)
    eager_out, eager_k, _ = Attend()(*args)
    torch.testing.assert_close(eager_out, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eager_k, keys.transpose(1, 2))

    session, model = _op_session(Attend(), args)
    (node,) = [n for n in model.graph.node if n.op_type == "Attention"]
    assert _attrs(node).get("softcap", 0.0) == pytest.approx(softcap or 0.0)
    out, present_k, present_v = _run(session, *args)
    np.testing.assert_allclose(out, want.numpy(), atol=1e-5)
    np.testing.assert_array_equal(present_k, keys.transpose(1, 2).numpy())
    np.testing.assert_array_equal(present_v, values.transpose(1, 2).numpy())


# Gemma 2: softcaps, sliding layers 0 and 2; Gemma 3: q/k norms, local rotary base, sliding
# layers 0 and 1; GPT-NeoX / StableLM 25% and Phi-2 50% rotary; GPT-2 learned positions.
FEATURE_FAMILIES = ["gemma2", "gemma3", "gpt_neox", "phi", "stablelm", "gpt2"]


@pytest.fixture(scope="module")
def family_bundles(tmp_path_factory):
    """family_bundles(family, scheme) -> (checkpoint, bundle folder, artefact), exported once
    with a 64-token context (tiny windows are 16 tokens)."""
    from mobilekit import families
    from mobilekit.tiny import make_tiny_checkpoint

    made = {}

    def get(family, scheme="fp32"):
        if (family, scheme) not in made:
            root = tmp_path_factory.mktemp(f"{family}-{scheme}")
            ckpt = checkpoint.resolve(str(make_tiny_checkpoint(root / "checkpoint", families.get(family).tiny_config)))
            made[family, scheme] = (ckpt, *export_bundle(ckpt, scheme, root / "bundle", max_seq_len=64))
        return made[family, scheme]

    return get


@pytest.mark.parametrize("family", FEATURE_FAMILIES)
def test_family_graph_matches_the_decoder_past_its_window(family_bundles, family):
    """Prefill 20 tokens, then one token a step up to 40 (past the 16-token windows): plain
    ONNX Runtime equals the eager decoder; each layer is one Attention node (with the model's
    softcap) reading the mask of its own window, RotaryEmbedding nodes carry the rotary
    width, LayerNorm families use LayerNormalization."""
    import onnx

    from mobilekit.modeling import EagerDecoder

    ckpt, path, artefact = family_bundles(family)
    decoder = ckpt.build_decoder()
    spec = decoder.spec
    ids = torch.randint(0, 512, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = EagerDecoder(decoder)(ids)[0, 19:].numpy()
    s = TARGET.open_session(path, {"max_seq_len": 64})
    s.reset()
    got = np.stack([s.step(ids[0, :20].tolist())] + [s.step([int(t)]) for t in ids[0, 20:]])
    assert np.abs(got - want).max() <= 1e-4

    nodes = list(onnx.load(str(path / "model.onnx"), load_external_data=False).graph.node)
    layers = range(spec.num_layers)
    attention = [n for n in nodes if n.op_type == "Attention"]
    assert len(attention) == spec.num_layers
    softcaps = [_attrs(n).get("softcap", 0.0) for n in attention]
    assert softcaps == pytest.approx([spec.attention_softcap or 0.0] * spec.num_layers)
    windows = [spec.layer_window(i) for i in layers]
    masks = [n.input[3] for n in attention]
    assert len(set(masks)) == len(set(windows))  # one mask per window, built once
    assert all((masks[i] == masks[j]) == (windows[i] == windows[j]) for i in layers for j in layers)

    rotary = [n for n in nodes if n.op_type == "RotaryEmbedding"]
    assert len(rotary) == (2 * spec.num_layers if spec.rotary_width else 0)
    assert {_attrs(n).get("rotary_embedding_dim") or spec.head_dim for n in rotary} <= {spec.rotary_width}
    norm = "LayerNormalization" if spec.norm == "layer" else "RMSNormalization"
    per_layer = (1 if spec.residual == "parallel_shared_norm" else 2) + 2 * spec.sandwich_norms + 2 * spec.qk_norm
    assert sum(n.op_type == norm for n in nodes) == per_layer * spec.num_layers + 1  # one node per norm

    note = artefact.io["kv_cache"]["sliding_window"]
    if spec.has_sliding_layers:
        assert note["window"] == 16 and note["layers"] == [i for i in layers if windows[i]]
    else:
        assert note is None


@pytest.mark.parametrize("family", ["gemma2", "gemma3", "gpt2"])
def test_genai_runs_the_family_past_its_window(family_bundles, family):
    """ONNX Runtime GenAI (type "llama" for every family) on a 30-token prompt and 14 new
    tokens, past the 16-token windows: the eager decoder's greedy tokens."""
    from mobilekit.runtime.eager import EagerSession

    ckpt, path, _ = family_bundles(family)
    prompt = torch.randint(3, 512, (30,), generator=torch.Generator().manual_seed(2)).tolist()
    eager = EagerSession(ckpt.build_decoder(), 64)
    eager.reset()
    logits, expected = eager.step(prompt), []
    for _ in range(14):
        expected.append(int(np.argmax(logits)))
        logits = eager.step([expected[-1]])
    assert TARGET.app_runtime_greedy(path, prompt, 14) == expected


def test_int4_reaches_tied_biased_and_position_weights(family_bundles):
    """GPT-2: tied token embedding read from the lm head's int4 blocks, the learned position
    table left a float Gather, every linear (all biased) MatMulNBits. Phi-2: untied head
    quantized with its bias added after, and its own token embedding quantized to the same
    int4 blocks (GatherBlockQuantized), which dequantize to what the weight format predicts."""
    import onnx
    from onnx import numpy_helper

    from mobilekit.targets.onnx import onnx_weight_format

    for family, shared in (("gpt2", True), ("phi", False)):
        ckpt, path, artefact = family_bundles(family, "int4")
        spec = ckpt.spec
        model = onnx.load(str(path / "model.onnx"), load_external_data=False)
        inits = {i.name: i for i in model.graph.initializer}
        nodes = list(model.graph.node)
        linears = spec.num_layers * (4 + (3 if spec.mlp == "gated" else 2)) + 1
        assert sum(n.op_type == "MatMulNBits" for n in nodes) == linears
        assert not [n for n in nodes if n.op_type == "MatMul" and n.input[1] in inits]
        assert artefact.extra["quantization"]["embedding"].startswith("int4")
        gathers = {n.input[0]: n.op_type for n in nodes if n.op_type.startswith("Gather") and n.input[0] in inits}
        assert [n.input[1] for n in nodes if n.op_type == "GatherBlockQuantized"] == ["input_ids"]
        if family == "gpt2":
            assert [n.input[1] for n in nodes if n.op_type == "GatherBlockQuantized"] == ["input_ids"]
            assert gathers["decoder.embed_positions.weight"] == "Gather"
            assert list(inits["decoder.embed_positions.weight"].dims) == [256, 64]
        else:
            head = next(n for n in nodes if n.name.startswith("decoder.lm_head"))
            (add,) = [n for n in nodes if head.output[0] in n.input]
            assert add.op_type == "Add" and "decoder.lm_head.bias" in add.input
            assert "decoder.embed_tokens.weight" not in inits  # the fp32 table left the file
            full = onnx.load(str(path / "model.onnx"))
            data = {i.name: numpy_helper.to_array(i) for i in full.graph.initializer}
            packed, scales = data["decoder.embed_tokens.weight.q_rows"], data["decoder.embed_tokens.weight.q_scales"]
            nibbles = np.stack([packed & 0xF, packed >> 4], -1).reshape(packed.shape[0], -1).astype(np.float32) - 8
            table = (nibbles.reshape(*scales.shape, -1) * scales[..., None]).reshape(packed.shape[0], -1)
            embedding = ckpt.build_decoder().embed_tokens
            want = onnx_weight_format().weight(embedding, "linear", 4).numpy()
            np.testing.assert_allclose(table[:, :spec.hidden_size], want, rtol=1e-6, atol=1e-7)


def test_llama_layers_stay_a_few_fused_nodes(bundles):
    """The decode speed of Llama-like models rests on ~19 nodes a layer (RMSNormalization,
    MatMuls, RotaryEmbedding, Attention, and the Pads of GenAI's gap on k and v); decomposed,
    a layer is ~70."""
    import onnx

    nodes = onnx.load(str(bundles["fp32"][0] / "model.onnx"), load_external_data=False).graph.node
    assert len(nodes) <= 40 + 19 * 2


# --- the real SmolLM2-135M-Instruct -----------------------------------------------------


def test_pipeline_validates_through_genai_too(tiny_llama_dir, tmp_path):
    from mobilekit import pipeline

    context = pipeline.make_context(None, str(tiny_llama_dir), SEQ)
    result = pipeline.export(context, pipeline.ExportOptions(target="onnx", scheme="fp32", output=tmp_path / "b"))
    app = result.manifest["validation"]["stage2"]["app_runtime"]
    assert app["runtime"] == "ONNX Runtime GenAI" and app["passed"]
    assert app["greedy_match"] == 1.0 and set(app["greedy_tokens"]) == {"chat0", "chat1", "text0"}
