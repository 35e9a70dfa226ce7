"""The Core ML target on a tiny Llama: each scheme exported through the real pipeline,
checked against the swift-transformers contract by spec, and validated (stage 2) by reading
the package's weights back into the decoder (Core ML itself runs only on macOS, where the
real MLModel is used instead). The SmolLM2 tests are slow and print their measurements."""

import json
import sys

import numpy as np
import pytest
import torch

from mobilekit import pipeline, quantize
from mobilekit.errors import BundleError, SchemeNotSupported, TargetUnavailable, ValidationFailed
from mobilekit.runtime import Session
from mobilekit.targets import ExportRequest, get

from mobilekit.runtime import coreml as rt
from mobilekit.targets import coreml as cm

SCHEMES = get("coreml").schemes
MAX_SEQ_LEN = 64
LINUX_ONLY = pytest.mark.skipif(
    sys.platform == "darwin",
    reason="on macOS validation and generate run the real Core ML runtime, not the Linux weight round-trip",
)
MACOS_ONLY = pytest.mark.skipif(sys.platform != "darwin", reason="Core ML runtime exists only on macOS")


@pytest.fixture(scope="module")
def context(tiny_llama_dir):
    return pipeline.make_context(None, str(tiny_llama_dir), MAX_SEQ_LEN)


@pytest.fixture(scope="module")
def bundles(context, export_every_scheme):
    return export_every_scheme(context, "coreml")


def _package(bundles, scheme):
    return bundles[scheme].path / cm.MODEL_FILE


# --- the contract ------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_spec_check_passes(bundles, scheme):
    result = cm.check_spec(bundles[scheme].path, scheme)
    assert result["ok"] and result["specification_version"] == cm.SPEC_VERSION_IOS18
    assert bundles[scheme].manifest["export"]["spec_check"]["ok"]


def test_io_is_what_swift_transformers_loads(bundles, context):
    spec = context.checkpoint.spec
    manifest = json.loads((bundles["fp16"].path / "mobilekit.json").read_text())
    io = manifest["io"]
    assert [i["name"] for i in io["inputs"]] == ["inputIds", "causalMask"]
    assert io["inputs"][0]["dtype"] == "int32" and io["inputs"][0]["shape"] == [1, "T"]
    assert io["inputs"][1]["dtype"] == "float16" and io["inputs"][1]["shape"] == [1, 1, "T", "past+T"]
    assert io["outputs"] == [{"name": "logits", "dtype": "float16", "shape": [1, "T", spec.vocab_size]}]
    cache = [spec.num_layers, 1, spec.num_kv_heads, MAX_SEQ_LEN, spec.head_dim]
    assert io["states"] == [
        {"name": "keyCache", "dtype": "float16", "shape": cache},
        {"name": "valueCache", "dtype": "float16", "shape": cache},
    ]
    assert io["dims"]["T"] == {"min": 1, "max": MAX_SEQ_LEN}
    checked = manifest["export"]["spec_check"]
    assert checked["inputs"][0]["ranges"] == [[1, 1], [1, MAX_SEQ_LEN]]
    assert checked["inputs"][1]["ranges"] == [[1, 1], [1, 1], [1, MAX_SEQ_LEN], [1, MAX_SEQ_LEN]]
    assert {"model.mlpackage/Manifest.json", "tokenizer.json"} <= set(manifest["files"])


def test_export_facts(bundles):
    extra = bundles["fp16"].manifest["export"]
    assert set(extra["timings"]) == {"torch_export_s", "decompose_s", "convert_s", "quantize_s", "save_s",
                                     "spec_check_s"}
    assert extra["deployment_target"].startswith("iOS18")
    assert extra["recommended_compute_units"] == "cpuAndNeuralEngine"
    assert bundles["fp32"].manifest["export"]["recommended_compute_units"] == "cpuOnly"
    ops = extra["mil_op_types"]
    # the stateful cache and the iOS 18 fused attention are what make the model cheap to run
    for op in ("read_state", "coreml_update_state", "slice_update", "scaled_dot_product_attention", "linear"):
        assert op in ops, op


def test_fp32_states_are_still_fp16(bundles):
    """Core ML states are fp16 only; the fp32 scheme computes in fp32 around fp16 caches."""
    io = bundles["fp32"].manifest["io"]
    assert {s["dtype"] for s in io["states"]} == {"float16"}
    assert io["outputs"][0]["dtype"] == "float32"
    assert bundles["fp32"].manifest["export"]["compute_precision"] == "float32"


def test_int4_stores_blockwise_int4(bundles):
    result = cm.check_spec(bundles["int4"].path, "int4")
    weights = result["weights"]
    assert weights["constexpr_ops"].get("constexpr_blockwise_shift_scale", 0) > 0
    assert weights["quantized"]["int4"] > 0
    assert weights["quantized"]["int8"] == 1  # the embedding table stays 8-bit
    assert weights["int4_block_sizes"] == [32]
    assert "constexpr_blockwise_shift_scale" in bundles["int4"].manifest["export"]["mil_op_types"]


def test_int8_stores_per_channel_int8(bundles):
    from coremltools.converters.mil.mil import types

    program, _ = rt.load_program(_package(bundles, "int8"))
    ops = [op for op in program.functions["main"].operations if op.op_type == "constexpr_blockwise_shift_scale"]
    assert ops
    for op in ops:
        assert types.builtin_to_string(op.data.dtype) == "int8"
        assert op.scale.shape == (op.data.shape[0], 1)  # one scale per output channel


def test_quantized_packages_are_smaller(bundles):
    sizes = {s: bundles[s].manifest["export"]["size_bytes"] for s in SCHEMES}
    assert sizes["int4"] < sizes["int8"] < sizes["fp16"] < sizes["fp32"]


def test_check_spec_names_the_mismatch(bundles, tmp_path):
    with pytest.raises(ValidationFailed, match="no constexpr_blockwise_shift_scale op stores int4"):
        cm.check_spec(bundles["fp16"].path, "int4")
    with pytest.raises(ValidationFailed, match="output logits is float16, expected float32"):
        cm.check_spec(bundles["fp16"].path, "fp32")
    with pytest.raises(ValidationFailed, match=r"state shape \[2, 1, 2, 64, 16\] differs"):
        cm.check_spec(bundles["fp16"].path, "fp16", {"layers": 3, "kv_heads": 2, "head_dim": 16,
                                                      "max_seq_len": MAX_SEQ_LEN, "vocab_size": 512})
    with pytest.raises(BundleError, match="does not exist"):
        cm.check_spec(tmp_path, "fp16")


def test_unsupported_scheme_raises(context, tmp_path):
    target = get("coreml")
    with pytest.raises(SchemeNotSupported, match="does not offer quant scheme 'int2'"):
        target.check_scheme("int2")
    request = ExportRequest(decoder=context.checkpoint.build_decoder(), scheme="bf16", max_seq_len=MAX_SEQ_LEN,
                            bos_id=None, eos_ids=[], out_dir=tmp_path)
    with pytest.raises(SchemeNotSupported, match="It offers: fp16, fp32, int8, int4"):
        target.export(request)


# --- stage 2: weights read back (Linux) ----------------------------------------------------


@LINUX_ONLY
@pytest.mark.parametrize("scheme", SCHEMES)
def test_roundtrip_within_budget(bundles, scheme):
    stage2 = bundles[scheme].manifest["validation"]["stage2"]
    assert stage2["runtime"] == rt.ROUNDTRIP_RUNTIME
    assert stage2["budget"] == quantize.get(scheme).budget.as_dict()
    assert stage2["passed"], stage2["misses"]


@LINUX_ONLY
def test_fp32_roundtrip_is_exact(bundles, context):
    stage2 = bundles["fp32"].manifest["validation"]["stage2"]["metrics"]
    assert stage2["max_abs_logit_error"] < 1e-4 and stage2["greedy_match"] == 1.0
    original = context.checkpoint.build_decoder().state_dict()
    restored, report = rt.roundtrip_decoder(_package(bundles, "fp32"), context.checkpoint.spec)
    restored = restored.state_dict()
    assert restored.keys() == original.keys()
    for key, value in original.items():
        assert torch.equal(restored[key], value), key
    # the tiny model's RMSNorm weights are exactly 1: the converter folds those multiplies away
    assert report["identity"] == sorted(k for k in original if k.endswith("norm.weight"))


def test_fp16_roundtrip_is_the_fp16_rounding(bundles, context):
    original = context.checkpoint.build_decoder().state_dict()
    restored, _ = rt.roundtrip_decoder(_package(bundles, "fp16"), context.checkpoint.spec)
    for key, value in restored.state_dict().items():
        assert torch.equal(value, original[key].half().float()), key


@LINUX_ONLY
def test_open_session_is_a_roundtrip_session(bundles):
    manifest = bundles["int8"].manifest
    session = get("coreml").open_session(bundles["int8"].path, manifest)
    assert isinstance(session, Session) and session.runtime == rt.ROUNDTRIP_RUNTIME
    logits = session.step([1, 2, 3])
    assert logits.shape == (manifest["vocab_size"],) and np.isfinite(logits).all()


@LINUX_ONLY
def test_generate_explains_linux(bundles):
    with pytest.raises(TargetUnavailable, match="execute only on macOS/iOS.*mobilekit validate"):
        get("coreml").generate(bundles["fp16"].path, bundles["fp16"].manifest, "hi", 4, lambda _t: None)


def test_weights_are_found_by_graph_order_when_names_change(bundles, context):
    """If coremltools renames weights, linear and embedding weights still map by graph order
    and shape; weights that cannot be placed are reported missing, never guessed."""
    program, _ = rt.load_program(_package(bundles, "int4"))
    for i, op in enumerate(rt.weight_ops(program).values()):
        op.name = f"w{i}"
    decoder = context.checkpoint.build_decoder()
    sources, missing = rt.map_weights(program, decoder)
    assert sorted(missing) == sorted(k for k in decoder.state_dict() if k.endswith("norm.weight"))
    assert sources["lm_head.weight"].op_type == "constexpr_blockwise_shift_scale"
    restored = {k: torch.from_numpy(rt.materialize(op).astype(np.float32)) for k, op in sources.items()}
    original = decoder.state_dict()
    for key, value in restored.items():  # each weight landed on its own parameter
        assert torch.allclose(value, original[key], atol=0.1), key


def test_unexplained_missing_weight_raises(bundles, context, monkeypatch):
    monkeypatch.setattr(rt, "read_identity_metadata", lambda _spec: [])
    with pytest.raises(ValidationFailed, match=r"holds no weight for decoder parameters \['layers.0.input_norm"):
        rt.roundtrip_decoder(_package(bundles, "fp16"), context.checkpoint.spec)


def test_spec_from_manifest_rebuilds_rope_scaling(bundles):
    from mobilekit.modeling import Llama3RopeScaling

    manifest = bundles["fp16"].manifest
    assert rt.spec_from_manifest(manifest).vocab_size == manifest["vocab_size"]
    scaled = dict(manifest["decoder_spec"], rope_scaling={
        "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    spec = rt.spec_from_manifest({"decoder_spec": scaled})
    assert spec.rope_scaling == Llama3RopeScaling(32.0, 1.0, 4.0, 8192)
    with pytest.raises(BundleError, match="no decoder_spec"):
        rt.spec_from_manifest({})


# --- the converted module itself, run in torch ----------------------------------------------


def test_causal_mask_positions():
    mask = rt.causal_mask(2, 5)  # two new tokens at positions 3 and 4
    assert mask.shape == (1, 1, 2, 5) and mask.dtype == np.float16
    assert (mask[0, 0, 0] == [0, 0, 0, 0, rt.MASKED]).all()
    assert (mask[0, 0, 1] == 0).all()


def test_wrapper_matches_eager_over_prefill_decode_and_chunks(context):
    """The module coremltools converts (positions from the mask's shape, slice-updated fp16
    states) gives the eager decoder's logits, prefill then decode then a second chunk."""
    from mobilekit.runtime.eager import EagerSession

    decoder = context.checkpoint.build_decoder()
    eager, wrapper = EagerSession(decoder, MAX_SEQ_LEN), rt.WrapperSession(decoder, MAX_SEQ_LEN)
    eager.reset()
    wrapper.reset()
    for chunk in ([5, 9, 33, 100, 7, 8, 200, 3], [12], [13], [14, 15, 16, 17], [18]):
        want, got = eager.step(chunk), wrapper.step(chunk)
        # the only difference is the fp16 rounding of cached k/v
        assert np.abs(want - got).max() < 5e-3


def test_fp16_safe_norm_equals_rms_norm():
    from mobilekit.modeling.decoder import RMSNorm

    norm = RMSNorm(64, 1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
    x = torch.randn(4, 64).clamp(-4, 4) * torch.tensor([1e-3, 1.0, 300.0, 1.5e4])[:, None]  # fp16 max 65504
    assert torch.allclose(cm._fp16_safe_rms_norm(norm, x), norm(x), rtol=1e-4, atol=1e-6)
    # In fp16 throughout (what Core ML's fp16 compute makes of the decoder's norm) x^2
    # overflows on the large rows and they normalize to 0; the safe form stays right.
    half = RMSNorm(64, 1e-5).half()
    with torch.no_grad():
        half.weight.copy_(norm.weight)
    xh = x.half()
    plain = (half.weight * (xh * torch.rsqrt(xh.pow(2).mean(-1, keepdim=True) + half.eps))).float()
    assert torch.all(plain[2:] == 0)
    safe = cm._fp16_safe_rms_norm(half, xh).float()
    assert torch.allclose(safe, norm(x), rtol=1e-2, atol=1e-2)


# --- macOS: the real Core ML runtime --------------------------------------------------------


@MACOS_ONLY
@pytest.mark.parametrize("scheme", SCHEMES)
def test_coreml_runtime_within_budget(bundles, scheme):
    stage2 = bundles[scheme].manifest["validation"]["stage2"]
    assert stage2["runtime"] == rt.COREML_RUNTIME
    assert stage2["passed"], stage2["misses"]


@MACOS_ONLY
def test_coreml_session_prefill_then_decode(bundles, context):
    from mobilekit.runtime.eager import EagerSession

    session = get("coreml").open_session(bundles["fp32"].path, bundles["fp32"].manifest)
    assert isinstance(session, rt.CoreMLSession)
    eager = EagerSession(context.checkpoint.build_decoder(), MAX_SEQ_LEN)
    assert session.greedy([1, 5, 9, 33], 8) == eager.greedy([1, 5, 9, 33], 8)


@MACOS_ONLY
def test_coreml_generate(bundles):
    pieces = []
    result = get("coreml").generate(bundles["fp16"].path, bundles["fp16"].manifest, "Once upon a time", 8,
                                    pieces.append)
    assert result.token_ids and result.text == "".join(pieces)
    assert result.runtime == rt.COREML_RUNTIME and result.decode_tokens_per_s > 0
