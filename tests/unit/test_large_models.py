"""Large checkpoints on a small machine: weights stream in layer by layer, ExecuTorch
quantizes each layer as it arrives, and what cannot fit is refused up front with the fix."""

import pytest
import torch

from mobilekit import checkpoint, pipeline, quantize
from mobilekit.errors import ExportError
from mobilekit.tiny import TINY_CONFIGS, make_random_checkpoint, make_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory):
    return checkpoint.resolve(str(make_tiny_checkpoint(tmp_path_factory.mktemp("q"), TINY_CONFIGS["qwen2"])))


def test_layers_are_prepared_in_order_as_they_load(tiny_qwen2):
    seen = []

    def prepare(layer):
        # every weight of this layer is loaded; later layers are still on the meta device
        assert all(p.device.type == "cpu" for p in layer.parameters())
        seen.append(layer)

    decoder = tiny_qwen2.build_decoder(prepare_layer=prepare)
    assert seen == list(decoder.layers)
    whole = tiny_qwen2.build_decoder()
    for (name, a), (_, b) in zip(decoder.state_dict().items(), whole.state_dict().items()):
        assert torch.equal(a, b), name


def test_layer_quantizer_then_whole_model_quantizes_each_linear_once(tiny_qwen2):
    assert quantize.layer_quantizer("onnx", "int4") is None
    assert quantize.layer_quantizer("executorch", "fp32") is None
    decoder = tiny_qwen2.build_decoder(prepare_layer=quantize.layer_quantizer("executorch", "int4"))
    layer_weight = decoder.layers[0].mlp.up_proj.weight
    assert not quantize._not_yet_quantized(decoder.layers[0].mlp.up_proj)
    assert quantize._not_yet_quantized(decoder.lm_head)
    quantize.quantize_for_executorch(decoder, "int4")
    assert decoder.layers[0].mlp.up_proj.weight is layer_weight  # not quantized twice
    assert not quantize._not_yet_quantized(decoder.lm_head)


def test_random_checkpoint_has_the_hub_layout(tmp_path):
    folder = make_random_checkpoint(tmp_path / "r", TINY_CONFIGS["qwen2"], shard_bytes=40_000)
    assert len(list(folder.glob("model-*-of-*.safetensors"))) > 1
    ckpt = checkpoint.resolve(str(folder))
    assert ckpt.stored_dtype == torch.bfloat16
    decoder = ckpt.build_decoder()
    assert decoder.layers[0].attention.q_proj.weight.dtype == torch.float32


def test_a_model_too_large_for_memory_is_refused_with_the_fix(tiny_qwen2, monkeypatch, tmp_path):
    context = pipeline.make_context(None, str(tiny_qwen2.path), 64)
    monkeypatch.setattr(pipeline, "total_memory", lambda: 10_000)  # a 10 kB machine
    with pytest.raises(ExportError, match="--target executorch with --quant int4"):
        pipeline.export(context, pipeline.ExportOptions(target="onnx", scheme="fp32", output=tmp_path / "b"))
    with pytest.raises(ExportError, match="export with --no-validate here"):
        context.reference_dtype
    assert not (tmp_path / "b").exists()


def test_reference_falls_back_to_the_stored_16_bit_dtype(tmp_path, monkeypatch):
    folder = make_random_checkpoint(tmp_path / "r", TINY_CONFIGS["qwen2"])
    context = pipeline.make_context(None, str(folder), 64)
    assert context.reference_dtype == torch.float32
    fp32_bytes = context.checkpoint.spec.num_parameters * 4
    monkeypatch.setattr(pipeline, "total_memory", lambda: int(fp32_bytes / 0.6))  # fp32 too big, bf16 fits
    assert context.reference_dtype == torch.bfloat16
    assert context.reference_name == "transformers eager bf16"


def test_stage1_in_bf16_passes_its_budget(tmp_path, monkeypatch):
    folder = make_random_checkpoint(tmp_path / "r", TINY_CONFIGS["qwen2"])
    context = pipeline.make_context(None, str(folder), 64)
    monkeypatch.setattr(pipeline, "total_memory", lambda: int(context.checkpoint.spec.num_parameters * 4 / 0.6))
    stage1 = context.stage1(lambda _m: None)
    assert stage1["passed"], stage1["misses"]
    assert stage1["budget"] == quantize.BF16_REFERENCE_BUDGET.as_dict()
