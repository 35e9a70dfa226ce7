"""The Core ML target on a tiny Llama: each scheme exported through the real pipeline,
checked against the swift-transformers contract by spec, and validated (stage 2) by running
the saved package's MIL program through mobilekit's evaluator (Core ML itself runs only on
macOS, where the real MLModel is used instead). The SmolLM2 tests are slow and print their
measurements."""

import json
import sys

import numpy as np
import pytest
import torch

from mobilekit import pipeline, quantize
from mobilekit.errors import BundleError, SchemeNotSupported, ValidationFailed
from mobilekit.targets import ExportRequest, get

import coreml_helpers as helpers
from mobilekit.runtime import coreml as rt
from mobilekit.targets import coreml as cm
from mobilekit.formats import coreml as coreml_format
from mobilekit.lowering import coreml as lowering

SCHEMES = get("coreml").schemes
MAX_SEQ_LEN = 64
LINUX_ONLY = pytest.mark.skipif(
    sys.platform == "darwin",
    reason="on macOS validation and generate run the real Core ML runtime, not the Linux evaluator",
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
    # every layer attention: layer i in row i of both
    assert [(s["layer"], s["kind"], s["state"], s["index"]) for s in io["layer_states"]] == [
        (i, "kv", {"key": "keyCache", "value": "valueCache"}, i) for i in range(spec.num_layers)]
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


def test_int4_stores_uint4_blocks_with_float_offsets(bundles):
    from coremltools.converters.mil.mil import types

    result = cm.check_spec(bundles["int4"].path, "int4")
    weights = result["weights"]
    assert weights["constexpr_ops"].get("constexpr_blockwise_shift_scale", 0) > 0
    assert set(weights["quantized"]) == {"uint4"}  # the (tied) embedding table too
    assert weights["int4_block_sizes"] == [32]
    assert "constexpr_blockwise_shift_scale" in bundles["int4"].manifest["export"]["mil_op_types"]
    program, _ = coreml_format.load_program(_package(bundles, "int4"))
    main = program.functions["main"].operations
    for op in (op for op in main if op.op_type == "constexpr_blockwise_shift_scale"):
        assert types.builtin_to_string(op.offset.dtype) == "fp16" and op.offset.shape == op.scale.shape
    # the rotary tables are not weights: plain fp16 consts, as in the fp16 package
    rotary = [op for op in main if op.op_type == "const" and "rope" in op.name and op.outputs[0].rank == 2]
    assert rotary and all(types.builtin_to_string(op.outputs[0].dtype) == "fp16" for op in rotary)


def test_int4_float_offsets_keep_a_q4_1_grid():
    """A weight already on GGUF Q4_1's grid (d * q + m per block of 32, q in 0..15) comes back
    to fp16 rounding; a block far from 0 keeps a bounded offset; an all-zero block stays 0."""
    from mobilekit.targets.coreml import INT4_MAX_OFFSET, int4_float_offset

    rng = np.random.default_rng(0)
    q = rng.integers(0, 16, (64, 128))
    q[:, ::32], q[:, 1::32] = 0, 15  # each block spans its grid, as Q4_1's quantizer makes it
    d = rng.uniform(0.01, 0.05, (64, 4)).astype(np.float16).astype(np.float32)
    m = -rng.uniform(0.1, 0.4, (64, 4)).astype(np.float16).astype(np.float32)
    w = (np.repeat(d, 32, 1) * q + np.repeat(m, 32, 1)).astype(np.float16)
    w[0, :32] = 0
    w[1, :32] = 100 + np.linspace(0, 0.01, 32)  # far from 0 relative to its spread
    data, scale, offset = int4_float_offset(w)
    back = (data.astype(np.float32) - np.repeat(offset.astype(np.float32), 32, 1)) * np.repeat(scale.astype(np.float32), 32, 1)
    np.testing.assert_allclose(back[2:], w[2:].astype(np.float32), atol=2e-3 * np.abs(w[2:]).max())
    assert (data[2:] == q[2:]).mean() > 0.99
    assert np.all(back[0, :32] == 0)
    assert np.abs(offset.astype(np.float32)).max() <= INT4_MAX_OFFSET + 1e-3
    assert np.abs(back[1, :32] - 100).max() < 1.0


def test_int8_stores_per_channel_int8(bundles):
    from coremltools.converters.mil.mil import types

    program, _ = coreml_format.load_program(_package(bundles, "int8"))
    ops = [op for op in program.functions["main"].operations if op.op_type == "constexpr_blockwise_shift_scale"]
    assert ops
    for op in ops:
        assert types.builtin_to_string(op.data.dtype) == "int8"
        assert op.scale.shape == (op.data.shape[0], 1)  # one scale per output channel


def test_quantized_packages_are_smaller(bundles):
    sizes = {s: bundles[s].manifest["export"]["size_bytes"] for s in SCHEMES}
    assert sizes["int4"] < sizes["int8"] < sizes["fp16"] < sizes["fp32"]


def test_check_spec_names_the_mismatch(bundles, tmp_path):
    with pytest.raises(ValidationFailed, match="no constexpr_blockwise_shift_scale op stores uint4"):
        cm.check_spec(bundles["fp16"].path, "int4")
    with pytest.raises(ValidationFailed, match="output logits is float16, expected float32"):
        cm.check_spec(bundles["fp16"].path, "fp32")
    with pytest.raises(ValidationFailed, match=r"state shape \[2, 1, 2, 64, 16\] differs"):
        cm.check_spec(bundles["fp16"].path, "fp16", {"layers": 3, "kv_heads": 2, "head_dim": 16,
                                                      "max_seq_len": MAX_SEQ_LEN, "vocab_size": 512})
    with pytest.raises(BundleError, match="does not exist"):
        cm.check_spec(tmp_path, "fp16")


def test_check_spec_rejects_a_quantized_rotary_table(bundles, tmp_path):
    """coremltools' own linear_quantize_weights quantizes every large const, the rotary cos/sin
    tables too (what mobilekit's int4 did before issue 21): the spec check names them. (The
    tiny model's tables are below the default size threshold, so every const counts here.)"""
    import shutil

    import coremltools as ct
    import coremltools.optimize.coreml as cto

    shutil.copytree(bundles["fp16"].path, tmp_path / "b")
    package = tmp_path / "b" / coreml_format.MODEL_FILE
    config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                         weight_threshold=1)
    model = cto.linear_quantize_weights(ct.models.MLModel(str(package), skip_model_load=True),
                                        cto.OptimizationConfig(global_config=config))
    shutil.rmtree(package)
    model.save(str(package))
    with pytest.raises(ValidationFailed, match=r"const \S*rope\S* is quantized but is not a weight \(read by slice_by_index"):
        cm.check_spec(tmp_path / "b", "int8")


def test_unsupported_scheme_raises(context, tmp_path):
    target = get("coreml")
    with pytest.raises(SchemeNotSupported, match="does not offer quant scheme 'int2'"):
        target.check_scheme("int2")
    request = ExportRequest(decoder=context.checkpoint.build_decoder(), scheme="bf16", max_seq_len=MAX_SEQ_LEN,
                            bos_id=None, eos_ids=[], out_dir=tmp_path)
    with pytest.raises(SchemeNotSupported, match="It offers: fp32, fp16, int8, int4"):
        target.export(request)


# --- stage 2: the program through the evaluator (Linux) -------------------------------------


@LINUX_ONLY
@pytest.mark.parametrize("scheme", SCHEMES)
def test_evaluator_within_budget(bundles, context, scheme):
    stage2 = bundles[scheme].manifest["validation"]["stage2"]
    assert stage2["runtime"].startswith(rt.EVALUATOR_RUNTIME)  # the manifest says who ran stage 2
    assert stage2["budget"] == context.budget(scheme, get("coreml")).as_dict()
    assert stage2["passed"], stage2["misses"]


def test_fp32_budget_moves_only_for_the_fp16_states(context):
    """Core ML states are fp16 only: the fp32 artefact's max |Δlogit| bound widens, top-1 and
    greedy get fp16's gates (a 0.05 error flips near-ties), the worst position's cosine moves
    to 0.9999 (tiny Gemma 3n: 0.999979); perplexity keeps fp32's bound."""
    plain, coreml = quantize.get("fp32").budget, context.budget("fp32", get("coreml"))
    assert coreml.max_abs_logit_error == 0.05
    assert coreml.min_top1_agreement == quantize.get("fp16").budget.min_top1_agreement
    assert coreml.min_greedy_match is None
    assert coreml.min_cosine == 0.9999 < plain.min_cosine
    assert coreml.max_ppl_increase_pct == plain.max_ppl_increase_pct
    assert context.budget("fp16", get("coreml")) == quantize.get("fp16").budget


@LINUX_ONLY
def test_fp32_through_the_evaluator(bundles, context):
    """As on device (fp16 states) within the fp32 budget's other bounds; with the states
    widened to fp32 the converted graph gives the decoder's logits to float precision."""
    from mobilekit.runtime.eager import EagerSession

    metrics = bundles["fp32"].manifest["validation"]["stage2"]["metrics"]
    assert metrics["max_abs_logit_error"] < 5e-3 and metrics["top1_agreement"] == 1.0
    assert metrics["greedy_match"] == 1.0 and metrics["min_cosine"] > 0.99999
    eager = EagerSession(context.checkpoint.build_decoder(), MAX_SEQ_LEN)
    widened = rt.EvaluatorSession(_package(bundles, "fp32"), MAX_SEQ_LEN, precision="fp32")
    eager.reset()
    widened.reset()
    for chunk in ([5, 9, 33, 100, 7, 8, 200, 3], [12], [13], [14, 15, 16, 17], [18]):
        assert np.abs(eager.step(chunk) - widened.step(chunk)).max() < 2e-5


def test_fp32_roundtrip_restores_every_weight(bundles, context):
    original = context.checkpoint.build_decoder().state_dict()
    restored, report = helpers.roundtrip_decoder(_package(bundles, "fp32"), context.checkpoint.spec)
    restored = restored.state_dict()
    assert restored.keys() == original.keys()
    for key, value in original.items():
        assert torch.equal(restored[key], value), key
    # every tiny weight is random: each has a const of its own
    assert report["identity"] == [] and report["shared"] == {}


def test_fp16_roundtrip_is_the_fp16_rounding(bundles, context):
    original = context.checkpoint.build_decoder().state_dict()
    restored, _ = helpers.roundtrip_decoder(_package(bundles, "fp16"), context.checkpoint.spec)
    for key, value in restored.state_dict().items():
        assert torch.equal(value, original[key].half().float()), key


@LINUX_ONLY
def test_open_session_is_the_evaluator(bundles):
    manifest = bundles["int8"].manifest
    session = get("coreml").open_session(bundles["int8"].path, manifest)
    assert isinstance(session, rt.EvaluatorSession) and session.runtime.startswith(rt.EVALUATOR_RUNTIME)
    assert "not Core ML" in session.runtime and session.runtime.endswith("fp16 compute")
    logits = session.step([1, 2, 3])
    assert logits.shape == (manifest["vocab_size"],) and np.isfinite(logits).all()


@LINUX_ONLY
def test_generate_runs_the_evaluator_and_says_so(bundles):
    bundle = bundles["fp16"]
    pieces = []
    result = get("coreml").generate(bundle.path, bundle.manifest, "Once upon a time", 8, pieces.append)
    assert result.runtime.startswith(rt.EVALUATOR_RUNTIME) and "not Core ML" in result.runtime
    assert result.token_ids and result.text == "".join(pieces) and result.decode_tokens_per_s > 0
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(bundle.path)("Once upon a time", add_special_tokens=False)["input_ids"]
    session = rt.EvaluatorSession(_package(bundles, "fp16"), MAX_SEQ_LEN)
    assert session.greedy(ids, 8, set(bundle.manifest["eos_ids"])) == result.token_ids


def test_cli_generate_names_the_evaluator(bundles):
    from click.testing import CliRunner

    from mobilekit.cli import main

    out = CliRunner().invoke(main, ["generate", str(bundles["fp16"].path), "Hello", "--max-new-tokens", "4",
                                    "--no-chat"], catch_exceptions=False)
    assert out.exit_code == 0, out.output  # click >= 8.2: output holds stdout and stderr
    expected = rt.EVALUATOR_RUNTIME if sys.platform != "darwin" else rt.COREML_RUNTIME
    assert expected in out.output


def test_weights_are_found_by_graph_order_when_names_change(bundles, context):
    """If coremltools renames weights, linear and embedding weights still map by graph order
    and shape; weights that cannot be placed are reported missing, never guessed."""
    program, _ = coreml_format.load_program(_package(bundles, "int4"))
    for i, op in enumerate(lowering.weight_ops(program).values()):
        op.name = f"w{i}"
    decoder = context.checkpoint.build_decoder()
    sources, missing = lowering.map_weights(program, decoder)
    assert sorted(missing) == sorted(k for k in decoder.state_dict() if k.endswith("norm.weight"))
    assert sources["lm_head.weight"].op_type == "constexpr_blockwise_shift_scale"
    restored = {k: torch.from_numpy(lowering.materialize(op).astype(np.float32)) for k, op in sources.items()}
    original = decoder.state_dict()
    for key, value in restored.items():  # each weight landed on its own parameter
        assert torch.allclose(value, original[key], atol=0.1), key


def test_unexplained_missing_weight_raises(bundles, context, monkeypatch):
    load = coreml_format.load_program

    def renamed_norm(path):
        program, spec_pb = load(path)
        for op in lowering.weight_ops(program).values():
            if lowering._base_name(op.name) == lowering.param_name("layers.0.input_norm.weight"):
                op.name = "renamed"
        return program, spec_pb

    monkeypatch.setattr(helpers, "load_program", renamed_norm)
    with pytest.raises(ValidationFailed, match=r"holds no weight for decoder parameters \['layers.0.input_norm"):
        helpers.roundtrip_decoder(_package(bundles, "fp16"), context.checkpoint.spec)


def test_spec_from_manifest_rebuilds_rope_scaling(bundles):
    from mobilekit.modeling import Llama3RopeScaling

    manifest = bundles["fp16"].manifest
    assert helpers.spec_from_manifest(manifest).vocab_size == manifest["vocab_size"]
    scaled = dict(manifest["decoder_spec"], rope_scaling={
        "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    spec = helpers.spec_from_manifest({"decoder_spec": scaled})
    assert spec.rope_scaling == Llama3RopeScaling(32.0, 1.0, 4.0, 8192)
    with pytest.raises(BundleError, match="no decoder_spec"):
        helpers.spec_from_manifest({})


# --- the converted module itself, run in torch ----------------------------------------------


def test_causal_mask_positions():
    mask = rt.causal_mask(2, 5)  # two new tokens at positions 3 and 4
    assert mask.shape == (1, 1, 2, 5) and mask.dtype == np.float16
    assert (mask[0, 0, 0] == [0, 0, 0, 0, coreml_format.MASKED]).all()
    assert (mask[0, 0, 1] == 0).all()


def test_wrapper_matches_eager_over_prefill_decode_and_chunks(context):
    """The module coremltools converts (positions from the mask's shape, slice-updated fp16
    states) gives the eager decoder's logits, prefill then decode then a second chunk."""
    from mobilekit.runtime.eager import EagerSession

    decoder = context.checkpoint.build_decoder()
    eager, wrapper = EagerSession(decoder, MAX_SEQ_LEN), helpers.WrapperSession(decoder, MAX_SEQ_LEN)
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
    assert torch.allclose(lowering._fp16_safe_rms_norm(norm, x), norm(x), rtol=1e-4, atol=1e-6)
    # In fp16 throughout (what Core ML's fp16 compute makes of the decoder's norm) x^2
    # overflows on the large rows and they normalize to 0; the safe form stays right.
    half = RMSNorm(64, 1e-5).half()
    with torch.no_grad():
        half.weight.copy_(norm.weight)
    xh = x.half()
    plain = (half.weight * (xh * torch.rsqrt(xh.pow(2).mean(-1, keepdim=True) + half.eps))).float()
    assert torch.all(plain[2:] == 0)
    safe = lowering._fp16_safe_rms_norm(half, xh).float()
    assert torch.allclose(safe, norm(x), rtol=1e-2, atol=1e-2)


def test_fp16_safe_layer_norm_equals_layer_norm():
    from mobilekit.modeling.decoder import LayerNorm

    norm = LayerNorm(64, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    x = (torch.randn(4, 64).clamp(-4, 4) + 0.5) * torch.tensor([1e-3, 1.0, 300.0, 1.2e4])[:, None]
    assert torch.allclose(lowering._fp16_safe_layer_norm(norm, x), norm(x), rtol=1e-4, atol=1e-5)
    # A variance computed in fp16 (what Core ML's fp16 compute may make of layer_norm) overflows on
    # the large rows; the safe form, in fp16 throughout, stays right.
    xh = x.half()
    centered = xh - xh.mean(-1, keepdim=True)
    assert torch.isinf(centered.pow(2).mean(-1)[2:]).all()
    half = LayerNorm(64, eps=1e-5).half()
    with torch.no_grad():
        half.weight.copy_(norm.weight)
        half.bias.copy_(norm.bias)
    assert torch.allclose(lowering._fp16_safe_layer_norm(half, xh).float(), norm(x), rtol=1e-2, atol=2e-2)


def test_fp16_safe_norms_cover_every_norm_and_refuse_a_changed_norm(monkeypatch):
    """q/k norms over head_dim (Gemma 3) and LayerNorms are swapped too; a safe form that no
    longer computes the decoder's norm (here: one that drops the bias) is refused."""
    from mobilekit.errors import ExportError
    from mobilekit.modeling import Decoder, DecoderSpec
    from mobilekit.modeling.decoder import LayerNorm, RMSNorm

    rms = Decoder(DecoderSpec(vocab_size=32, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                              intermediate_size=64, max_position_embeddings=64, qk_norm=True))
    keys = list(rms.state_dict())
    lowering.apply_fp16_safe_norms(rms)
    names = {n for n, m in rms.named_modules() if isinstance(m, lowering.FP16SafeNorm)}
    assert {"layers.0.attention.q_norm", "layers.0.attention.k_norm", "layers.0.input_norm", "norm"} <= names
    assert not any(isinstance(m, (LayerNorm, RMSNorm)) for m in rms.modules())
    assert list(rms.state_dict()) == keys  # the converted weights keep the decoder's names
    layer = Decoder(DecoderSpec(vocab_size=32, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2,
                                head_dim=16, intermediate_size=64, max_position_embeddings=64, norm="layer"))
    norms = [m for m in layer.modules() if isinstance(m, LayerNorm)]
    with lowering.fp16_safe_norms(layer):
        assert not any(isinstance(m, LayerNorm) for m in layer.modules())
    assert [m for m in layer.modules() if isinstance(m, LayerNorm)] == norms  # the same modules back

    def no_bias(self, x):
        s = x.abs().amax(-1, keepdim=True)
        y = x / s
        c = y - y.mean(-1, keepdim=True)
        return c * torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + self.eps / s / s) * self.weight

    monkeypatch.setitem(lowering.FP16_SAFE_NORMS, LayerNorm, no_bias)
    with pytest.raises(ExportError, match="LayerNorm no longer matches"):
        lowering.apply_fp16_safe_norms(layer)


# --- every family: sliding windows, softcaps, q/k norms, learned positions --------------------


@pytest.fixture(scope="module")
def tiny_family(tmp_path_factory):
    from mobilekit import checkpoint, families
    from mobilekit.tiny import make_tiny_checkpoint

    made = {}

    def build(name):
        if name not in made:
            folder = make_tiny_checkpoint(tmp_path_factory.mktemp(f"tiny-{name}"), families.get(name).tiny_config)
            made[name] = checkpoint.resolve(str(folder))
        return made[name]

    return build


# prefill past the 16-token windows, single decode steps, then a chunk whose queries straddle
# the window boundary differently per row
CHUNKS = ([5, 9, 33, 100, 7, 8, 200, 3, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52], [12], [13],
          [14, 15, 16, 17, 18, 19, 20, 21], [22], [23])


@pytest.mark.parametrize("family", ["gemma2", "gemma3", "gpt2", "phi"])
def test_wrapper_matches_eager_for_each_family(tiny_family, family):
    """The converted module, its cache kept in fp32 so that only its logic is compared: the
    in-graph sliding-window masks (Gemma 2/3), Gemma 2's softcapped attention, Gemma 3's local
    and global rotary tables and q/k norms, GPT-2's learned positions and Phi-2's partial
    rotary give the eager decoder's logits, past the window, over prefill, decode and chunks."""
    from mobilekit.runtime.eager import EagerSession

    decoder = tiny_family(family).build_decoder()
    eager = EagerSession(decoder, MAX_SEQ_LEN)
    exact = helpers.WrapperSession(decoder, MAX_SEQ_LEN, cache_dtype=torch.float32)
    coreml_like = helpers.WrapperSession(decoder, MAX_SEQ_LEN)  # fp16 states, as Core ML has them
    for session in (eager, exact, coreml_like):
        session.reset()
    for chunk in CHUNKS:
        want = eager.step(chunk)
        assert np.abs(exact.step(chunk) - want).max() < 2e-5
        assert np.abs(coreml_like.step(chunk) - want).max() < 5e-3
    assert eager.position >= 2 * 16  # twice the window


def test_wrapper_window_mask_is_what_bites(tiny_family, monkeypatch):
    """Without the in-graph window mask, Gemma 2 past its window departs from the reference:
    the agreement above is not an accident of the tiny model."""
    from mobilekit.runtime.eager import EagerSession

    decoder = tiny_family("gemma2").build_decoder()
    monkeypatch.setattr(lowering, "MASKED_VALUE", 0.0)  # sliding layers then see the whole past
    eager = EagerSession(decoder, MAX_SEQ_LEN)
    wrapper = helpers.WrapperSession(decoder, MAX_SEQ_LEN, cache_dtype=torch.float32)
    eager.reset()
    wrapper.reset()
    errors = [np.abs(eager.step(c) - wrapper.step(c)).max() for c in CHUNKS]
    assert errors[0] > 0.1


@pytest.fixture(scope="module")
def family_packages(tiny_family, tmp_path_factory):
    """fp16 packages (the app default) of Gemma 2 (every layer softcapped, windows on 0 and
    2) and GPT-2 (LayerNorm, learned positions), exported by the target without validation."""
    target = get("coreml")
    found = {}
    for name in ("gemma2", "gpt2"):
        ckpt = tiny_family(name)
        out = tmp_path_factory.mktemp(f"coreml-{name}")
        artefact = target.export(ExportRequest(decoder=ckpt.build_decoder(), scheme="fp16", max_seq_len=MAX_SEQ_LEN,
                                               bos_id=None, eos_ids=[], out_dir=out))
        found[name] = (ckpt, out, artefact)
    return found


def test_sliding_window_is_recorded(family_packages):
    ckpt, out, artefact = family_packages["gemma2"]
    window = artefact.io["kv_cache"]["sliding_window"]
    assert (window["window"], window["layers"]) == (16, [0, 2])
    assert "not smaller" in window["cache"] and "plain causal mask" in window["mask"]
    assert artefact.io["states"][0]["shape"][3] == MAX_SEQ_LEN  # full-length cache all the same
    assert artefact.extra["spec_check"]["sliding_window"] == {"window": 16, "layers": [0, 2]}
    assert "sliding_window" not in family_packages["gpt2"][2].io["kv_cache"]
    assert family_packages["gpt2"][2].extra["spec_check"]["sliding_window"] is None
    expected = {"layers": 3, "kv_heads": 2, "head_dim": 16, "max_seq_len": MAX_SEQ_LEN, "vocab_size": 512,
                "sliding_window": None}
    with pytest.raises(ValidationFailed, match="metadata mobilekit.sliding_window is"):
        cm.check_spec(out, "fp16", expected)


def test_converted_ops_per_family(family_packages):
    gemma2 = family_packages["gemma2"][2].extra["mil_op_types"]
    # every Gemma 2 layer caps its scores, which the fused SDPA cannot: tanh per layer + final
    # cap, plus the tanh-GELU spelled out in each layer's MLP (no `gelu` op: coremltools would
    # convert it as the exact-erf GELU)
    assert "scaled_dot_product_attention" not in gemma2 and gemma2["tanh"] == 3 + 1 + 3
    assert "gelu" not in gemma2
    gpt2 = family_packages["gpt2"][2].extra["mil_op_types"]
    assert gpt2["scaled_dot_product_attention"] == 3
    # fp16 compute: the LayerNorms are the fp16-safe form, not Core ML's layer_norm op
    assert "layer_norm" not in gpt2
    assert gpt2["gather"] >= 2  # token and position embeddings


@pytest.mark.parametrize("family", ["gemma2", "gpt2"])
def test_family_roundtrip_is_the_fp16_rounding(family_packages, family):
    ckpt, out, _ = family_packages[family]
    original = ckpt.build_decoder().state_dict()
    restored, report = helpers.roundtrip_decoder(out / cm.MODEL_FILE, ckpt.spec)
    for key, value in restored.state_dict().items():
        assert torch.equal(value, original[key].half().float()), key
    assert report["identity"] == [] and report["shared"] == {}


def _identity_and_shared_decoder():
    """A LayerNorm decoder with every kind of bias whose layer 0 norms are untrained (ones and
    zeros: folded away by the converter) and whose layers 1 and 2 hold equal input-norm and fc_in
    tensors of >= 100 elements (merged by coremltools' const deduplication)."""
    from mobilekit.modeling import Decoder, DecoderSpec

    spec = DecoderSpec(vocab_size=256, hidden_size=128, num_layers=3, num_heads=4, num_kv_heads=4, head_dim=32,
                       intermediate_size=256, max_position_embeddings=128, norm="layer", mlp="plain",
                       activation="gelu", qkv_bias=True, output_bias=True, mlp_bias=True, lm_head_bias=True,
                       learned_positions=True, rotary_dim=0)
    torch.manual_seed(0)
    decoder = Decoder(spec).eval().requires_grad_(False)
    with torch.no_grad():
        for key, p in decoder.named_parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if p.ndim == 1 and key.endswith("weight") else 0.0))
        layers = decoder.layers
        for norm in (layers[0].input_norm, layers[0].post_attention_norm):
            norm.weight.fill_(1.0)
            norm.bias.zero_()
        layers[2].input_norm.weight.copy_(layers[1].input_norm.weight)
        layers[2].input_norm.bias.copy_(layers[1].input_norm.bias)
        layers[2].mlp.fc_in.bias.copy_(layers[1].mlp.fc_in.bias)
    return decoder


def test_folded_and_deduplicated_weights_are_restored(tmp_path):
    decoder = _identity_and_shared_decoder()
    artefact = get("coreml").export(ExportRequest(decoder=decoder, scheme="int8", max_seq_len=MAX_SEQ_LEN,
                                                  bos_id=None, eos_ids=[], out_dir=tmp_path))
    identity = {"layers.0.input_norm.weight", "layers.0.input_norm.bias", "layers.0.post_attention_norm.weight",
                "layers.0.post_attention_norm.bias"}
    assert set(artefact.extra["identity_weights"]) == identity
    shared = artefact.extra["shared_weights"]
    norm_pairs = {("layers.2.input_norm.weight", "layers.1.input_norm.weight"),
                  ("layers.2.input_norm.bias", "layers.1.input_norm.bias")}
    assert {(k, v) if k.startswith("layers.2") else (v, k) for k, v in shared.items()} == norm_pairs

    restored, report = helpers.roundtrip_decoder(tmp_path / cm.MODEL_FILE, decoder.spec)
    assert set(report["identity"]) == identity and report["shared"] == shared
    # the deduplicated fc_in bias is found as the bias input of layer 2's own linear op
    assert report["mapped"]["layers.2.mlp.fc_in.bias"] == report["mapped"]["layers.1.mlp.fc_in.bias"]
    original, restored = decoder.state_dict(), restored.state_dict()
    for key, value in original.items():
        if value.ndim == 1:
            assert torch.equal(restored[key], value.half().float()), key  # 1-D tensors stay fp16
        else:  # int8, one scale per row: within a quantization step of its own tensor
            step = value.abs().amax(1, keepdim=True) / 127
            assert torch.all((restored[key] - value).abs() <= step), key

    # and if coremltools renames every weight, linear biases still follow their linear's weight
    program, _ = coreml_format.load_program(tmp_path / cm.MODEL_FILE)
    for i, op in enumerate(lowering.weight_ops(program).values()):
        op.name = f"w{i}"
    sources, _ = lowering.map_weights(program, decoder)
    linear_biases = [f"{n}.bias" for n, m in decoder.named_modules() if isinstance(m, torch.nn.Linear)]
    assert set(linear_biases) <= set(sources)
    for key in linear_biases:
        assert torch.equal(torch.from_numpy(lowering.materialize(sources[key]).astype(np.float32)),
                           original[key].half().float()), key


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


@MACOS_ONLY
@pytest.mark.parametrize("scheme", ["fp32", "fp16", "int4"])
def test_evaluator_matches_mlmodel_predict(bundles, scheme):
    """The same inputs, chunk after chunk through the states, into the real MLModel (CPU only:
    the one unit whose fp32 path is fp32) and into mobilekit's evaluator of the same package.
    Runs only where Core ML exists (macOS); on Linux the evaluator is checked against the
    eager decoder instead."""
    import coremltools as ct

    from mobilekit.runtime.mil_evaluator import load_evaluator

    path = _package(bundles, scheme)
    model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)
    evaluator = load_evaluator(path)
    real, evaluated = model.make_state(), evaluator.make_state()
    end = 0
    for chunk in ([5, 9, 33, 100, 7, 8, 200, 3], [12], [13], [14, 15, 16, 17], [18]):
        end += len(chunk)
        inputs = {"inputIds": np.asarray([chunk], dtype=np.int32), "causalMask": rt.causal_mask(len(chunk), end)}
        want = np.asarray(model.predict(inputs, state=real)["logits"], dtype=np.float32)
        got = np.asarray(evaluator.predict(inputs, evaluated)["logits"], dtype=np.float32)
        assert got.shape == want.shape
        # fp32: both keep fp16 states, so only float reassociation differs; fp16 compute: Core
        # ML's kernels round differently inside ops (an estimate, not its bits)
        tolerance = 1e-4 if scheme == "fp32" else 3e-2
        assert np.abs(got - want).max() <= tolerance * max(1.0, float(np.abs(want).max()))
        assert (got[0].argmax(-1) == want[0].argmax(-1)).mean() >= (1.0 if scheme == "fp32" else 0.9)
