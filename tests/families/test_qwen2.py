"""Qwen2: stage 1 (decoder vs transformers) and stage 2 on every target, tiny random config."""

import pytest
import torch

from mobilekit import checkpoint, pipeline, targets
from mobilekit.modeling import EagerDecoder
from mobilekit.tiny import TINY_QWEN2, make_tiny_checkpoint


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-qwen2"), TINY_QWEN2)


def test_decoder_matches_transformers(qwen2_dir):
    ckpt = checkpoint.resolve(str(qwen2_dir))
    assert ckpt.family.name == "qwen2"
    assert ckpt.spec.qkv_bias and not ckpt.spec.output_bias and ckpt.spec.tie_word_embeddings
    ids = torch.randint(0, 512, (1, 48), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(EagerDecoder(ckpt.build_decoder())(ids), ckpt.load_reference()(ids).logits,
                               atol=2e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def context(qwen2_dir):
    return pipeline.make_context(None, str(qwen2_dir), 128)


@pytest.mark.parametrize("scheme", ["fp32", "int4"])
@pytest.mark.parametrize("target", targets.names())
def test_every_target_within_budget(context, tmp_path, target, scheme):
    result = pipeline.export(context, pipeline.ExportOptions(target=target, scheme=scheme, output=tmp_path / "b"))
    validation = result.manifest["validation"]
    assert validation["passed"], validation["stage2"]["misses"]
    assert result.manifest["family"] == "qwen2"


def test_sliding_window_checkpoints_are_refused():
    from mobilekit.errors import CheckpointError
    from mobilekit.families.qwen2 import spec_from_config

    with pytest.raises(CheckpointError, match="use_sliding_window"):
        spec_from_config({**TINY_QWEN2, "use_sliding_window": True, "sliding_window": 16})
