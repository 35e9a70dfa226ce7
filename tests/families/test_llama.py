"""Stage 1 for the Llama family: the mobilekit decoder vs transformers eager, tiny random
configs with the family's quirks switched on."""

import pytest
import torch

from mobilekit import checkpoint
from mobilekit.modeling import EagerDecoder
from mobilekit.runtime.eager import EagerSession
from mobilekit.tiny import TINY_LLAMA, make_tiny_checkpoint

CONFIGS = {
    "llama-gqa-untied": TINY_LLAMA,
    "llama-mha-tied-bias": {**TINY_LLAMA, "num_key_value_heads": 4, "tie_word_embeddings": True,
                            "attention_bias": True, "mlp_bias": True},
    "llama-explicit-head-dim": {**TINY_LLAMA, "head_dim": 32},
    "llama3-rope-scaling": {**TINY_LLAMA, "rope_theta": 500000.0, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}},
    "mistral": {**TINY_LLAMA, "architectures": ["MistralForCausalLM"], "model_type": "mistral",
                "sliding_window": None, "head_dim": 32},
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def tiny(request, tmp_path_factory):
    folder = make_tiny_checkpoint(tmp_path_factory.mktemp(request.param), CONFIGS[request.param])
    return checkpoint.resolve(str(folder))


def test_decoder_matches_transformers(tiny):
    ids = torch.randint(0, 512, (1, 48), generator=torch.Generator().manual_seed(0))
    ours = EagerDecoder(tiny.build_decoder())(ids)
    theirs = tiny.load_reference()(ids).logits
    assert tiny.family.name == "llama"
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)


def test_incremental_decode_matches_full_forward(tiny):
    ids = torch.randint(0, 512, (1, 24), generator=torch.Generator().manual_seed(1))
    decoder = tiny.build_decoder()
    full = EagerDecoder(decoder)(ids)[0]
    session = EagerSession(decoder, 64)
    session.reset()
    got = [session.step(ids[0, :8].tolist())]
    got += [session.step([int(t)]) for t in ids[0, 8:]]
    torch.testing.assert_close(torch.tensor(got[-1]), full[-1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(got[0]), full[7], atol=1e-5, rtol=1e-5)


def test_llama3_scaling_changes_frequencies():
    from mobilekit.modeling.decoder import rotary_inv_freq

    from mobilekit.families.llama import spec_from_config

    plain = spec_from_config({**TINY_LLAMA, "rope_theta": 500000.0})
    scaled = spec_from_config(CONFIGS["llama3-rope-scaling"])
    a, b = rotary_inv_freq(plain), rotary_inv_freq(scaled)
    assert torch.equal(a[:1], b[:1])  # the highest frequency (wavelength 2π) is kept
    torch.testing.assert_close(b[-1], a[-1] / 8)  # low frequencies divided by factor


def test_mistral_sliding_window_is_masked_not_refused(tmp_path):
    """A window shorter than the context: the full-length cache plus a window mask is exact."""
    from mobilekit import pipeline

    folder = make_tiny_checkpoint(tmp_path / "swa", {**CONFIGS["mistral"], "sliding_window": 16})
    ckpt = checkpoint.resolve(str(folder))
    assert [ckpt.spec.layer_window(i) for i in range(ckpt.spec.num_layers)] == [16, 16]
    ids = torch.randint(0, 512, (1, 48), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(EagerDecoder(ckpt.build_decoder())(ids), ckpt.load_reference()(ids).logits,
                               atol=2e-5, rtol=1e-4)
    assert pipeline.make_context(None, str(folder), 128).max_seq_len == 128
