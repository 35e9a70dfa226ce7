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


def test_executorch_logits_match_eager_token_by_token(tmp_path, expected):
    exporter = get("executorch")
    artefact = exporter.export(ExportRequest(decoder=delta_decoder(), scheme="fp32", max_seq_len=SEQ, bos_id=None,
                                             eos_ids=[2], out_dir=tmp_path))
    states = artefact.io["layer_states"]
    assert [s["buffers"] for s in states] == [["conv_state_0", "recurrent_state_0"], ["k_cache_1", "v_cache_1"],
                                              ["conv_state_2", "recurrent_state_2"]]
    session = exporter.open_session(tmp_path, {"max_seq_len": SEQ, "io": artefact.io, "scheme": "fp32"})
    for tokens, prefill, want in ((FIRST, 6, expected[0]), (SECOND, 3, expected[1])):
        got = stepped_logits(session, tokens, prefill)
        want = want[prefill - 1:]
        np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
        assert (got.argmax(-1) == want.argmax(-1)).all()


def test_a_prompt_longer_than_one_call_is_fed_in_calls(tmp_path, monkeypatch):
    """A delta model's calls are capped (modeling.decoder.DELTA_CALL_TOKENS: gated_delta_rule
    holds T x T matrices per head, and ExecuTorch plans memory for the largest call). The
    .pte says so to the runner (get_max_seq_len, while get_max_context_len is the cache), and
    a session feeds a longer prompt in calls of that size with the state carried across."""
    from mobilekit.modeling import decoder as modeling

    monkeypatch.setattr(modeling, "DELTA_CALL_TOKENS", 5)
    exporter = get("executorch")
    artefact = exporter.export(ExportRequest(decoder=delta_decoder(), scheme="fp32", max_seq_len=SEQ, bos_id=None,
                                             eos_ids=[2], out_dir=tmp_path))
    methods = artefact.io["constant_methods"]
    assert methods["get_max_seq_len"] == 5 and methods["get_max_context_len"] == SEQ
    session = exporter.open_session(tmp_path, {"max_seq_len": SEQ, "io": artefact.io, "scheme": "fp32"})
    assert session.max_call_tokens == 5
    want = eager_logits(delta_decoder(), FIRST)
    got = stepped_logits(session, FIRST, 11)  # 11 prompt tokens: calls of 5, 5 and 1
    np.testing.assert_allclose(got, want[10:], atol=1e-4 * np.abs(want).max())


def test_executorch_runner_generates_the_eager_text(tiny_llama_dir, tmp_path, monkeypatch):
    """ExecuTorch's C++ TextLLMRunner (the app runtime) on the delta model, with calls capped
    below the prompt's length: it prefills in chunks of get_max_seq_len, the .pte zeroes both
    states at position 0 itself, and a second run does not see the first one's state."""
    import dataclasses
    import shutil

    from transformers import AutoTokenizer

    from mobilekit.modeling import decoder as modeling

    monkeypatch.setattr(modeling, "DELTA_CALL_TOKENS", 3)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    torch.manual_seed(0)
    decoder = Decoder(dataclasses.replace(SPEC, vocab_size=len(tokenizer))).eval().requires_grad_(False)
    for name, p in decoder.named_parameters():
        torch.nn.init.normal_(p, mean=1.0 if "norm" in name else 0.0, std=0.3)
    prompt = "Rivers carry water to the sea"
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert len(ids) > 3
    with torch.no_grad():  # before the export, which rewrites the decoder's modules for XNNPACK
        for _ in range(10):
            ids.append(int(EagerDecoder(decoder)(torch.tensor([ids]))[0, -1].argmax()))
    expected = tokenizer.decode(ids[-10:])
    target = get("executorch")
    target.export(ExportRequest(decoder=decoder, scheme="fp32", max_seq_len=SEQ, bos_id=None, eos_ids=[],
                                out_dir=tmp_path))
    shutil.copy(tiny_llama_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    for _ in range(2):
        generated = target.generate(tmp_path, {"max_seq_len": SEQ}, prompt, 10, lambda _t: None)
        assert generated.text == expected
