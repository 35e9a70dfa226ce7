"""--quant auto through the pipeline on a tiny random Llama, for every target that offers
it: the plan's bits reach the artefact, the manifest records the plan, validation runs."""

import pytest

from mobilekit import families, pipeline, precision, targets
from mobilekit.errors import ExportError, SchemeNotSupported
from mobilekit.tiny import make_tiny_checkpoint

AUTO_TARGETS = [name for name in targets.names() if "auto" in targets.get(name).offered_schemes()]


@pytest.fixture(scope="module")
def context(tiny_llama_dir):
    return pipeline.make_context(None, str(tiny_llama_dir), 128)


@pytest.fixture(scope="module")
def auto_bundles(context, tmp_path_factory):
    root = tmp_path_factory.mktemp("auto")
    bundles = {}
    for name in AUTO_TARGETS:
        # half way from all-4-bit to all-8-bit
        low, high = precision.size_bounds(context.checkpoint.build_decoder(), targets.get(name).weight_format())
        goal = precision.Goal(max_size_bytes=int(low + 0.5 * (high - low)))
        bundles[name] = pipeline.export(context, pipeline.ExportOptions(
            target=name, scheme="auto", output=root / name, keep_failed=True, goal=goal))
    return bundles


@pytest.mark.parametrize("name", AUTO_TARGETS)
def test_auto_bundle_records_its_plan_and_validates(auto_bundles, name):
    manifest = auto_bundles[name].manifest
    plan = manifest["quantization"]
    assert manifest["quant"] == "auto" and plan["goal"].startswith("at most")
    bits = {g["group"]: g["bits"] for g in plan["groups"]}
    assert set(bits.values()) == {4, 8}
    assert manifest["validation"]["stage2"]["passed"], manifest["validation"]["stage2"]["misses"]


def test_onnx_matmuls_get_the_plans_bits(auto_bundles):
    import onnx

    bundle = auto_bundles["onnx"]
    wanted = {f"decoder.{module}/MatMul": g["bits"] for g in bundle.manifest["quantization"]["groups"]
              for module in g["modules"]}
    model = onnx.load(str(bundle.path / "model.onnx"), load_external_data=False)
    got = {n.name: next(a.i for a in n.attribute if a.name == "bits") for n in model.graph.node
           if n.op_type == "MatMulNBits"}
    assert {name: got.get(name + "_Q4", got.get(name + "_Q8", got.get(name))) for name in wanted} == wanted


def test_coreml_weights_get_the_plans_bits(context, auto_bundles):
    """Each planned linear's const is stored at its plan's bits: as many int4 (uint4 with
    float offsets) and int8 constexpr weights in the saved program as the plan has 4- and
    8-bit linears above coremltools' size threshold (a tied embedding is the head's const; an
    untied one is outside plans and adds one 4-bit table)."""
    from mobilekit.formats.coreml import MODEL_FILE, QUANTIZE_WEIGHT_THRESHOLD, _weight_storage, load_program

    bundle = auto_bundles["coreml"]
    decoder = context.checkpoint.build_decoder()
    modules = [(module, g["bits"]) for g in bundle.manifest["quantization"]["groups"] for module in g["modules"]
               if decoder.get_submodule(module).weight.numel() > QUANTIZE_WEIGHT_THRESHOLD]
    tied = decoder.spec.tie_word_embeddings
    stored = _weight_storage(load_program(bundle.path / MODEL_FILE)[0])["quantized"]
    assert stored.get("uint4", 0) == sum(bits == 4 for _, bits in modules) + (0 if tied else 1)
    assert stored.get("int8", 0) == sum(bits == 8 for _, bits in modules)


def test_auto_needs_a_goal_and_a_target_that_offers_it(context, tmp_path):
    with pytest.raises(ExportError, match="--quant auto needs"):
        pipeline.export(context, pipeline.ExportOptions(target="executorch", scheme="auto", output=tmp_path / "a"))
    with pytest.raises(ExportError, match="only apply to --quant auto"):
        pipeline.export(context, pipeline.ExportOptions(target="executorch", scheme="int4", output=tmp_path / "b",
                                                        goal=precision.Goal(max_size_bytes=10 ** 9)))
    with pytest.raises(SchemeNotSupported, match="does not offer quant scheme 'fp16'"):
        targets.get("executorch").check_scheme("fp16")
    assert not any(tmp_path.iterdir())


def test_auto_plans_conv_layers(tmp_path):
    """LFM2's conv layers are groups of the plan like attention layers, and their bits reach
    the ONNX artefact."""
    import onnx

    folder = make_tiny_checkpoint(tmp_path / "lfm2", families.get("lfm2").tiny_config)
    context = pipeline.make_context(None, str(folder), 64)
    low, high = precision.size_bounds(context.checkpoint.build_decoder(), targets.get("onnx").weight_format())
    bundle = pipeline.export(context, pipeline.ExportOptions(
        target="onnx", scheme="auto", output=tmp_path / "b", keep_failed=True,
        goal=precision.Goal(max_size_bytes=int(low + 0.5 * (high - low)))))
    groups = {g["group"]: g for g in bundle.manifest["quantization"]["groups"]}
    assert {"layers.0.conv", "layers.1.attention", "layers.2.conv"} <= set(groups)
    model = onnx.load(str(bundle.path / "model.onnx"), load_external_data=False)
    bits = {n.name: next(a.i for a in n.attribute if a.name == "bits") for n in model.graph.node
            if n.op_type == "MatMulNBits"}
    for module in groups["layers.0.conv"]["modules"]:
        name = f"decoder.{module}/MatMul"
        assert bits.get(name + "_Q4", bits.get(name + "_Q8", bits.get(name))) == groups["layers.0.conv"]["bits"]
