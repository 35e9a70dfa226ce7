"""Large checkpoints on a small machine: weights stream in layer by layer, ExecuTorch
quantizes each layer as it arrives, and what cannot fit is refused up front with the fix."""

import pytest
import torch

from mobilekit import checkpoint, pipeline, quantize, targets
from mobilekit.targets import executorch as et
from mobilekit.errors import ExportError
from mobilekit.families.qwen2 import TINY_CONFIG as TINY_QWEN2
from mobilekit.tiny import make_random_checkpoint, make_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory):
    return checkpoint.resolve(str(make_tiny_checkpoint(tmp_path_factory.mktemp("q"), TINY_QWEN2)))


def test_layers_are_prepared_in_order_as_they_load(tiny_qwen2):
    seen = []

    def prepare(module):
        # every weight of this part is loaded; later layers are still on the meta device
        assert all(p.device.type == "cpu" for p in module.parameters())
        seen.append(module)

    decoder = tiny_qwen2.build_decoder(prepare=prepare)
    assert seen == [*decoder.layers, decoder]  # each layer as it completes, then the whole model
    whole = tiny_qwen2.build_decoder()
    for (name, a), (_, b) in zip(decoder.state_dict().items(), whole.state_dict().items()):
        assert torch.equal(a, b), name


def test_layer_quantizer_quantizes_everything_while_loading_and_only_once(tiny_qwen2):
    assert targets.get("onnx").layer_quantizer("int4") is None
    assert targets.get("executorch").layer_quantizer("fp32") is None
    decoder = tiny_qwen2.build_decoder(prepare=targets.get("executorch").layer_quantizer("int4"))
    quantizable = [m for m in decoder.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))]
    assert not any(et._not_yet_quantized(m) for m in quantizable)  # head and embedding too
    weights = [m.weight for m in quantizable]
    et.quantize_for_executorch(decoder, "int4")
    assert all(m.weight is w for m, w in zip(quantizable, weights))  # not quantized twice


@pytest.mark.parametrize("kind", [torch.nn.Embedding, torch.nn.Linear])
def test_large_weights_quantized_in_row_blocks_equal_quantized_whole(kind, monkeypatch):
    torch.manual_seed(0)
    shape = (200, 64) if kind is torch.nn.Embedding else (64, 200)  # 200 rows of 64 either way
    whole, chunked = kind(*shape), kind(*shape)
    chunked.load_state_dict(whole.state_dict())
    chunked.weight = torch.nn.Parameter(chunked.weight.detach().to(torch.bfloat16), requires_grad=False)
    whole.weight = torch.nn.Parameter(whole.weight.detach().to(torch.bfloat16).float(), requires_grad=False)
    et.quantize_for_executorch(whole, "int4")
    monkeypatch.setattr(et, "ROW_CHUNK_ELEMENTS", 64 * 48)  # blocks of 48 rows, the last one short
    et.quantize_for_executorch(chunked, "int4")
    assert type(chunked.weight) is type(whole.weight) and chunked.weight.dtype == torch.float32
    for name in type(whole.weight).tensor_data_names:
        assert torch.equal(getattr(chunked.weight, name), getattr(whole.weight, name)), name
    x = torch.randint(0, 200, (1, 5)) if kind is torch.nn.Embedding else torch.randn(1, 5, 64)
    torch.testing.assert_close(chunked(x), whole(x), rtol=0, atol=0)


def test_random_checkpoint_has_the_hub_layout(tmp_path):
    folder = make_random_checkpoint(tmp_path / "r", TINY_QWEN2, shard_bytes=40_000)
    assert len(list(folder.glob("model-*-of-*.safetensors"))) > 1
    ckpt = checkpoint.resolve(str(folder))
    assert ckpt.stored_dtype == torch.bfloat16
    decoder = ckpt.build_decoder()
    assert decoder.layers[0].attention.q_proj.weight.dtype == torch.float32
    # quantized while loading: the bf16 embedding and head are quantized straight from bf16,
    # and what stays float (norms, biases) arrives in fp32
    quantized = ckpt.build_decoder(prepare=targets.get("executorch").layer_quantizer("int4"))
    assert not et._not_yet_quantized(quantized.embed_tokens)
    assert quantized.embed_tokens.weight.dtype == quantized.lm_head.weight.dtype == torch.float32
    assert quantized.norm.weight.dtype == quantized.layers[0].attention.q_proj.bias.dtype == torch.float32


def test_a_model_too_large_for_memory_is_refused_with_the_fix(tiny_qwen2, monkeypatch, tmp_path):
    context = pipeline.make_context(None, str(tiny_qwen2.path), 64)
    monkeypatch.setattr(pipeline, "total_memory", lambda: 10_000)  # a 10 kB machine
    with pytest.raises(ExportError, match="--target executorch with --quant int4"):
        pipeline.export(context, pipeline.ExportOptions(target="onnx", scheme="fp32", output=tmp_path / "b"))
    with pytest.raises(ExportError, match="export with --no-validate here"):
        context.reference_dtype
    assert not (tmp_path / "b").exists()


def test_reference_falls_back_to_the_stored_16_bit_dtype(tmp_path, monkeypatch):
    folder = make_random_checkpoint(tmp_path / "r", TINY_QWEN2)
    context = pipeline.make_context(None, str(folder), 64)
    assert context.reference_dtype == torch.float32
    fp32_bytes = context.checkpoint.spec.num_parameters * 4
    monkeypatch.setattr(pipeline, "total_memory", lambda: int(fp32_bytes / 0.6))  # fp32 too big, bf16 fits
    assert context.reference_dtype == torch.bfloat16
    assert context.reference_name == "transformers eager bf16"


def test_stage1_in_bf16_passes_its_budget(tmp_path, monkeypatch):
    folder = make_random_checkpoint(tmp_path / "r", TINY_QWEN2)
    context = pipeline.make_context(None, str(folder), 64)
    monkeypatch.setattr(pipeline, "total_memory", lambda: int(context.checkpoint.spec.num_parameters * 4 / 0.6))
    stage1 = context.stage1(lambda _m: None)
    assert stage1["passed"], stage1["misses"]
    assert stage1["budget"] == quantize.BF16_REFERENCE_BUDGET.as_dict()
