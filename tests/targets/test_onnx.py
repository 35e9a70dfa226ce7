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


def test_quantize_onnx_on_a_saved_model_matches_export(bundles, tmp_path):
    """quantize_onnx rewrites a saved fp32 bundle in place, external data kept, into the
    same model the export path quantizes in memory."""
    from mobilekit.targets.onnx import quantize_onnx

    folder = tmp_path / "q"
    shutil.copytree(bundles["fp32"][0], folder)
    facts = quantize_onnx(folder / "model.onnx", "int4")
    assert facts["method"] == "MatMulNBits" and facts["bits"] == 4
    assert sorted(p.name for p in folder.glob("model.onnx*")) == ["model.onnx", "model.onnx.data"]
    ids = list(range(5, 25))
    a, b = session((folder, None)), session(bundles["int4"])
    np.testing.assert_array_equal(a.step(ids), b.step(ids))


def test_export_wrapper_runs_eagerly_like_the_decoder(tiny):
    """The wrapper and its custom ops (which export only sees through their fake kernels)
    compute the decoder's math in eager mode too: prefill, then one step on the presents."""
    from mobilekit.modeling import EagerDecoder
    from mobilekit.targets.onnx import OnnxDecoder, _onnx_modules, _onnx_ops

    _onnx_ops()
    decoder = tiny.build_decoder()
    spec = decoder.spec
    ids = torch.tensor([[5, 9, 11, 40, 7, 3]])
    want = EagerDecoder(decoder)(ids)
    with torch.no_grad(), _onnx_modules(decoder):
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


# --- the real SmolLM2-135M-Instruct -----------------------------------------------------


def test_pipeline_validates_through_genai_too(tiny_llama_dir, tmp_path):
    from mobilekit import pipeline

    context = pipeline.make_context(None, str(tiny_llama_dir), SEQ)
    result = pipeline.export(context, pipeline.ExportOptions(target="onnx", scheme="fp32", output=tmp_path / "b"))
    app = result.manifest["validation"]["stage2"]["app_runtime"]
    assert app["runtime"] == "ONNX Runtime GenAI" and app["passed"]
    assert app["greedy_match"] == 1.0 and set(app["greedy_tokens"]) == {"chat0", "chat1", "text0"}
