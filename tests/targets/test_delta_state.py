"""Qwen3.5's Gated DeltaNet state (a conv state plus a recurrent matrix per layer) on the
tiny qwen3_5 decoder (delta, attention, delta): the recurrence as one chunk equals
transformers' token-by-token rule at any split of the sequence into calls, and ExecuTorch's
program, driven as apps drive it (a prefill chunk, then one token per step, then a new
sequence in the same session), gives the logits of eager decoding over the whole sequence.
The ONNX and Core ML targets have their own files (test_delta_state_onnx.py, _coreml.py)."""

import numpy as np
import pytest
import torch

from mobilekit import families
from mobilekit.formats import layer_states
from mobilekit.modeling import Decoder, EagerDecoder
from mobilekit.modeling.decoder import gated_delta_rule, l2_normalize
from mobilekit.targets import ExportRequest, get

SEQ = 32
SPEC = families.get("qwen3_5").spec_from_config(families.get("qwen3_5").tiny_config)
FIRST = [5, 17, 3, 88, 41, 9, 60, 2, 33, 71, 400, 12]  # prefill 6, then 6 single steps (past the conv width)
SECOND = [12, 12, 40, 7, 95, 1, 50]  # prefill 3, then 4 single steps


def delta_decoder() -> Decoder:
    torch.manual_seed(0)
    decoder = Decoder(SPEC).eval().requires_grad_(False)
    for name, p in decoder.named_parameters():
        torch.nn.init.normal_(p, mean=1.0 if "norm" in name else 0.0, std=0.3)
    return decoder


def eager_logits(decoder: Decoder, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        return EagerDecoder(decoder)(torch.tensor([tokens]))[0].numpy()


def stepped_logits(session, tokens: list[int], prefill: int) -> np.ndarray:
    session.reset()
    rows = [session.step(tokens[:prefill])]
    rows += [session.step([t]) for t in tokens[prefill:]]
    return np.stack(rows)


def test_the_manifest_describes_both_states_of_a_delta_layer():
    states = layer_states(SPEC)
    assert [s["kind"] for s in states] == ["delta", "kv", "delta"]
    channels = 2 * SPEC.delta_key_heads * SPEC.delta_key_dim + SPEC.delta_value_heads * SPEC.delta_value_dim
    assert states[0]["shape"] == [1, channels, SPEC.conv_kernel - 1]
    assert states[0]["recurrent_shape"] == [1, SPEC.delta_value_heads, SPEC.delta_key_dim, SPEC.delta_value_dim]


@pytest.mark.parametrize("splits", [(1,) * 40, (40,), (7, 1, 1, 31), (16, 16, 8)])
def test_the_one_chunk_rule_equals_transformers_token_by_token_rule(splits):
    from transformers.models.qwen3_5.modeling_qwen3_5 import torch_recurrent_gated_delta_rule

    torch.manual_seed(3)
    b, t, h, dk, dv = 1, 40, 4, 16, 8
    q, k = torch.randn(b, t, h, dk), torch.randn(b, t, h, dk)
    v, beta = torch.randn(b, t, h, dv), torch.rand(b, t, h)
    g = -torch.rand(b, t, h) * 2
    want, want_state = torch_recurrent_gated_delta_rule(q, k, v, g, beta, output_final_state=True,
                                                        use_qk_l2norm_in_kernel=True)
    state, outs, start = torch.zeros(b, h, dk, dv), [], 0
    for n in splits:
        part = slice(start, start + n)
        out, state = gated_delta_rule(l2_normalize(q[:, part]) * dk ** -0.5, l2_normalize(k[:, part]), v[:, part],
                                      g[:, part], beta[:, part], state, max_len=64)
        outs.append(out)
        start += n
    torch.testing.assert_close(torch.cat(outs, 1), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, want_state, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def expected():
    decoder = delta_decoder()
    return eager_logits(decoder, FIRST), eager_logits(decoder, SECOND)


CALL_TOKENS = 5  # below the prompts' lengths, so prefill runs in several calls


@pytest.fixture(scope="module")
def pte(tmp_path_factory):
    """One fp32 .pte of the tiny delta decoder, its calls capped at CALL_TOKENS (the cap,
    modeling.decoder.DELTA_CALL_TOKENS, is 256: gated_delta_rule holds T x T matrices per
    head, and ExecuTorch plans memory for the largest call)."""
    from mobilekit.modeling import decoder as modeling

    out = tmp_path_factory.mktemp("delta-executorch")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(modeling, "DELTA_CALL_TOKENS", CALL_TOKENS)
        artefact = get("executorch").export(ExportRequest(decoder=delta_decoder(), scheme="fp32", max_seq_len=SEQ,
                                                          bos_id=None, eos_ids=[2], out_dir=out))
    return out, artefact


def test_executorch_logits_match_eager_token_by_token(pte, expected):
    """Prefill in calls of CALL_TOKENS, then one token per step; then a new sequence in the
    same session, which must not see the first one's states."""
    folder, artefact = pte
    states = artefact.io["layer_states"]
    assert [s["buffers"] for s in states] == [["conv_state_0", "recurrent_state_0"], ["k_cache_1", "v_cache_1"],
                                              ["conv_state_2", "recurrent_state_2"]]
    methods = artefact.io["constant_methods"]
    assert methods["get_max_seq_len"] == CALL_TOKENS and methods["get_max_context_len"] == SEQ
    session = get("executorch").open_session(folder, {"max_seq_len": SEQ, "io": artefact.io, "scheme": "fp32"})
    assert session.max_call_tokens == CALL_TOKENS
    for tokens, prefill, want in ((FIRST, 11, expected[0]), (FIRST, 6, expected[0]), (SECOND, 3, expected[1])):
        got = stepped_logits(session, tokens, prefill)
        want = want[prefill - 1:]
        np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
        assert (got.argmax(-1) == want.argmax(-1)).all()


def test_executorch_runner_generates_the_eager_text(pte, tiny_llama_dir):
    """ExecuTorch's C++ TextLLMRunner (the app runtime): it prefills the prompt in calls of
    get_max_seq_len, the .pte zeroes both states at position 0 itself (the runner has no
    reset), and a second run does not see the first one's state."""
    import shutil

    from transformers import AutoTokenizer

    folder, _ = pte
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert len(tokenizer) <= SPEC.vocab_size
    prompt = "Rivers carry water to the sea"
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert len(ids) > CALL_TOKENS
    decoder = delta_decoder()
    with torch.no_grad():
        for _ in range(10):
            ids.append(int(EagerDecoder(decoder)(torch.tensor([ids]))[0, -1].argmax()))
    expected = tokenizer.decode(ids[-10:])
    shutil.copy(tiny_llama_dir / "tokenizer.json", folder / "tokenizer.json")
    for _ in range(2):
        generated = get("executorch").generate(folder, {"max_seq_len": SEQ}, prompt, 10, lambda _t: None)
        assert generated.text == expected
