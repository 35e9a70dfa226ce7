"""Every family on a tiny random config with all its quirks switched on (each Family.tiny_config):
stage 1 (decoder vs transformers eager, fp32) and stage 2 on every target at fp32 and int4.
Families transformers lacks (MiniCPM, OpenELM, open_lm) use the independent eager references
in tests/reference instead of transformers, in both stages."""

import json

import pytest
import torch
from coreml_evaluator_checks import check_coreml_stage2
from reference import ReferenceLM, reference_for

from mobilekit import checkpoint, families, pipeline, targets
from mobilekit.errors import CheckpointError
from mobilekit.modeling import EagerDecoder
from mobilekit.runtime.eager import EagerSession
from mobilekit.tiny import make_tiny_checkpoint, tiny_budgets

# Phi-3's LongRoPE is exact up to its original context (64); every other tiny model
# exports 128 tokens, past its 16-token sliding windows.
SEQ_LEN = {"phi3": 64}


def test_every_tiny_config_is_claimed_by_its_family():
    for name in families.names():
        config = families.get(name).tiny_config
        assert families.for_architecture(config["architectures"], config["model_type"]).name == name


def independent_reference(name: str, folder) -> pipeline.ReferenceSource | None:
    """tests/reference's eager model of `folder` for a family transformers lacks, else None
    (the pipeline's default: transformers eager)."""
    if families.get(name).hf_reference_class is not None:
        return None
    config = json.loads((folder / "config.json").read_text())
    return pipeline.ReferenceSource(f"independent eager reference tests/reference ({name}) fp32",
                                    lambda _dtype: ReferenceLM(reference_for(folder, name), config))


@pytest.fixture(scope="module", params=families.names())
def family(request, tmp_path_factory):
    name = request.param
    folder = make_tiny_checkpoint(tmp_path_factory.mktemp(f"tiny-{name}"), families.get(name).tiny_config)
    context = pipeline.make_context(None, str(folder), SEQ_LEN.get(name, 128), tiny_budgets(name),
                                    reference=independent_reference(name, folder))
    return name, folder, context


def test_decoder_matches_transformers(family):
    name, folder, context = family
    ckpt = checkpoint.resolve(str(folder))
    assert ckpt.family.name == name
    ids = torch.randint(0, 512, (1, 48), generator=torch.Generator().manual_seed(0))
    decoder = ckpt.build_decoder()
    ours = EagerDecoder(decoder)(ids)
    torch.testing.assert_close(ours, context.reference_source.load(torch.float32)(ids).logits, atol=2e-5, rtol=1e-4)
    # the cached, token-by-token path (what every target does) agrees with the full forward
    session = EagerSession(decoder, 64)
    session.reset()
    steps = [session.step(ids[0, :8].tolist())] + [session.step([int(t)]) for t in ids[0, 8:]]
    torch.testing.assert_close(torch.tensor(steps[-1]), ours[0, -1], atol=1e-5, rtol=1e-5)


# ExecuTorch int4 takes ~50 s a family (XNNPACK lowering of the quantized graph): those 12
# cells run nightly (make test-nightly), as does the tiny matrix's cell of every recipe.
CELLS = [pytest.param(target, scheme, marks=[pytest.mark.nightly] if (target, scheme) == ("executorch", "int4") else [])
         for target in targets.names() for scheme in ("fp32", "int4")]


@pytest.mark.parametrize("target, scheme", CELLS)
def test_every_target_within_budget(family, tmp_path, target, scheme):
    name, _, context = family
    result = pipeline.export(context, pipeline.ExportOptions(target=target, scheme=scheme, output=tmp_path / "b"))
    validation = result.manifest["validation"]
    assert validation["passed"], validation["stage2"]["misses"]
    assert "metrics" in validation["stage1"], "stage 1 ran against an independent reference"
    assert result.manifest["family"] == name
    if target == "coreml":  # stage 2 through the MIL program evaluator on Linux; fp32 graph exactness
        check_coreml_stage2(name, context, result, scheme)


def test_qwen2_biases_and_refused_sliding_window():
    from mobilekit.families.qwen2 import spec_from_config

    spec = spec_from_config(families.get("qwen2").tiny_config)
    assert spec.qkv_bias and not spec.output_bias and spec.tie_word_embeddings
    with pytest.raises(CheckpointError, match="use_sliding_window"):
        spec_from_config({**families.get("qwen2").tiny_config, "use_sliding_window": True, "sliding_window": 16})


def test_qwen3_norms_and_refused_sliding_window():
    from mobilekit.families.qwen3 import spec_from_config

    spec = spec_from_config(families.get("qwen3").tiny_config)
    assert spec.qk_norm and spec.qk_norm_width == "head" and not spec.qkv_bias and spec.head_dim * spec.num_heads != spec.hidden_size
    with pytest.raises(CheckpointError, match="use_sliding_window"):
        spec_from_config({**families.get("qwen3").tiny_config, "use_sliding_window": True, "sliding_window": 16})


def test_phi3_longrope_context_is_bounded(tmp_path):
    from mobilekit.errors import ExportError

    folder = make_tiny_checkpoint(tmp_path / "phi3", families.get("phi3").tiny_config)
    with pytest.raises(ExportError, match="exceeds the model's context of 64 tokens"):
        pipeline.make_context(None, str(folder), 128)


def test_smollm3_nope_layers():
    """NoPE layers have no rotary module and get no rotary table; the others keep theirs."""
    from mobilekit.families.smollm3 import spec_from_config
    from mobilekit.modeling import Decoder

    spec = spec_from_config(families.get("smollm3").tiny_config)
    assert spec.nope_layers == (2,) and spec.rope_kinds == ("global",)
    assert [layer.attention.rotary is None for layer in Decoder(spec).layers] == [False, False, True]
    # a config with only the interval (no no_rope_layers list) gets transformers' default pattern
    assert spec_from_config({**families.get("smollm3").tiny_config, "num_hidden_layers": 8,
                             "no_rope_layer_interval": 4}).nope_layers == (3, 7)
