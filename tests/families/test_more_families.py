"""Families beyond Llama — Qwen2 (q/k/v biases) and Phi-3 (fused projections, LongRoPE):
stage 1 (decoder vs transformers) and stage 2 on every target, on tiny random configs."""

import pytest
import torch

from mobilekit import checkpoint, pipeline, targets
from mobilekit.errors import CheckpointError
from mobilekit.modeling import EagerDecoder
from mobilekit.tiny import TINY_PHI3, TINY_QWEN2, make_tiny_checkpoint

# family -> (tiny config, context to export: Phi-3's LongRoPE is exact up to its original context)
FAMILIES = {"qwen2": (TINY_QWEN2, 128), "phi3": (TINY_PHI3, 64)}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    config, seq_len = FAMILIES[request.param]
    folder = make_tiny_checkpoint(tmp_path_factory.mktemp(f"tiny-{request.param}"), config)
    return request.param, folder, pipeline.make_context(None, str(folder), seq_len)


def test_decoder_matches_transformers(family):
    name, folder, _ = family
    ckpt = checkpoint.resolve(str(folder))
    assert ckpt.family.name == name
    ids = torch.randint(0, 512, (1, 48), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(EagerDecoder(ckpt.build_decoder())(ids), ckpt.load_reference()(ids).logits,
                               atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("scheme", ["fp32", "int4"])
@pytest.mark.parametrize("target", targets.names())
def test_every_target_within_budget(family, tmp_path, target, scheme):
    name, _, context = family
    result = pipeline.export(context, pipeline.ExportOptions(target=target, scheme=scheme, output=tmp_path / "b"))
    validation = result.manifest["validation"]
    assert validation["passed"], validation["stage2"]["misses"]
    assert result.manifest["family"] == name


def test_qwen2_biases_and_refused_sliding_window():
    from mobilekit.families.qwen2 import spec_from_config

    spec = spec_from_config(TINY_QWEN2)
    assert spec.qkv_bias and not spec.output_bias and spec.tie_word_embeddings
    with pytest.raises(CheckpointError, match="use_sliding_window"):
        spec_from_config({**TINY_QWEN2, "use_sliding_window": True, "sliding_window": 16})


def test_phi3_longrope_context_is_bounded(family):
    name, folder, _ = family
    if name != "phi3":
        return
    from mobilekit.errors import ExportError

    with pytest.raises(ExportError, match="exceeds the model's context of 64 tokens"):
        pipeline.make_context(None, str(folder), 128)
