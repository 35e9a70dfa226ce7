"""Gemma 3n's layers carried across calls as an app carries them, on the ExecuTorch and ONNX
fp32 artefacts of the tiny gemma3n (Family.tiny_config: 5 layers, the last two sharing the
keys and values of layers 2 and 1, a 16-token window, AltUp, per-layer embeddings): a
prefill, single steps, a multi-token second turn and more single steps, 57 positions in all,
past the window, each call's logits against the eager decoder's full forward over the whole
sequence. A sharing layer's cache is a copy its source filled in the same call; a wrong copy
or a stale one shows here. Core ML runs the same kind of chunked calls in
tests/coreml_evaluator_checks.py (test_more_families)."""

import numpy as np
import pytest
import torch

from mobilekit import checkpoint, families
from mobilekit.modeling import EagerDecoder
from mobilekit.targets import ExportRequest, get
from mobilekit.tiny import make_tiny_checkpoint

SEQ = 64
EOS = 2
# (tokens of one call): prompt, two steps, a second turn of 9 tokens, steps, a third turn
CALLS = [[5, 17, 3, 88, 41, 9, 100, 7, 8, 200, 3, 41, 42, 43, 44, 45, 46, 47, 48, 49], [12], [13],
         [14, 15, 16, 17, 18, 19, 20, 21, 22], [23], [24], [25], [26], [27],
         [30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 50, 51, 52, 53, 54, 55, 56, 57], [58], [59]]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    folder = make_tiny_checkpoint(tmp_path_factory.mktemp("gemma3n") / "ckpt", families.get("gemma3n").tiny_config)
    decoder = checkpoint.resolve(str(folder)).build_decoder()
    assert decoder.spec.kv_sources == (1, 2) and decoder.spec.kv_source(3) == 2 and decoder.spec.kv_source(4) == 1
    return decoder


# The ExecuTorch case exports its own .pte (~60 s; AltUp's many small ops make many XNNPACK
# partitions): nightly. Every run still validates the family's ExecuTorch fp32 bundle through
# the runtime (tests/families/test_more_families.py).
@pytest.mark.parametrize("target", [pytest.param("executorch", marks=pytest.mark.nightly), "onnx"])
def test_calls_carry_every_layer_as_the_full_forward_sees_it(decoder, tmp_path, target):
    out = tmp_path / target
    out.mkdir()
    artefact = get(target).export(ExportRequest(decoder=decoder, scheme="fp32", max_seq_len=SEQ, bos_id=None,
                                                eos_ids=[EOS], out_dir=out))
    # the manifest tells an app which caches are copies, and of which layer
    assert [state.get("kv_source") for state in artefact.io["layer_states"]] == [None, None, None, 2, 1]
    session = get(target).open_session(out, {"max_seq_len": SEQ, "io": artefact.io, "scheme": "fp32"})
    session.reset()
    got = np.stack([session.step(call) for call in CALLS])
    with torch.no_grad():
        full = EagerDecoder(decoder)(torch.tensor([sum(CALLS, [])]))[0].numpy()
    want = full[np.cumsum([len(c) for c in CALLS]) - 1]
    np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)
