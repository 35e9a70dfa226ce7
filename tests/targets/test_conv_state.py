"""The decoder state model beyond the KV cache (issue 15): a tiny test-only decoder whose
first layer is LFM2's gated short convolution (a conv state: its last kernel-1 inputs)
and whose second is attention (a KV cache) exports to every target, and each target's
runtime, driven token by token, gives the logits of eager decoding over the whole sequence.

The runs: a prompt as one prefill chunk, then one token per step; then a second sequence
in the same session from position 0, which must not see the first one's conv state."""

import numpy as np
import pytest
import torch

from mobilekit.formats import layer_states
from mobilekit.modeling import Decoder, EagerDecoder
from mobilekit.modeling.spec import DecoderSpec
from mobilekit.targets import ExportRequest, get

SEQ = 32
SPEC = DecoderSpec(vocab_size=96, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                   intermediate_size=64, max_position_embeddings=64, layer_types=("conv", "full"),
                   conv_kernel=3, conv_bias=True)
FIRST = [5, 17, 3, 88, 41, 9, 60, 2, 33, 71]  # prefill 5, then 5 single steps
SECOND = [12, 12, 40, 7, 95, 1, 50]  # prefill 3, then 4 single steps


def conv_decoder(spec: DecoderSpec = SPEC) -> Decoder:
    torch.manual_seed(0)
    decoder = Decoder(spec).eval().requires_grad_(False)
    for p in decoder.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return decoder


def eager_logits(decoder: Decoder, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        return EagerDecoder(decoder)(torch.tensor([tokens]))[0].numpy()


def stepped_logits(session, tokens: list[int], prefill: int) -> np.ndarray:
    """Logits at each position from `session`: positions before `prefill` come from the
    prefill chunk's last row only, so those rows are taken from one-token calls after it."""
    session.reset()
    rows = [session.step(tokens[:prefill])]
    rows += [session.step([t]) for t in tokens[prefill:]]
    return np.stack(rows)


def test_the_manifest_describes_each_layers_state():
    states = layer_states(SPEC)
    assert [s["kind"] for s in states] == ["conv", "kv"]
    assert states[0]["shape"] == [1, SPEC.hidden_size, SPEC.conv_kernel - 1]
    assert states[1]["window"] is None


def test_eager_stepping_with_a_carried_conv_state_matches_the_whole_sequence():
    """The reference itself: CausalConv with its state carried call to call equals the
    convolution over the whole sequence."""
    from mobilekit.modeling.decoder import attention, attention_mask, rotary_tables, select_rows, zero_conv_state

    decoder = conv_decoder()
    whole = eager_logits(decoder, FIRST)
    conv_state, kv = zero_conv_state(SPEC), {}
    rows = []
    with torch.no_grad():
        for t, token in enumerate(FIRST):
            positions = torch.tensor([t])

            def attend(i, q, k, v):
                keys, values = kv.get(i, (k[:, :0], v[:, :0]))
                kv[i] = torch.cat([keys, k], 1), torch.cat([values, v], 1)
                return attention(q, *kv[i], attention_mask(positions, torch.arange(t + 1), None), SPEC.attention_scale)

            def convolve(i, x, conv):
                nonlocal conv_state
                out, conv_state = conv(x, conv_state)
                return out

            rope = select_rows(rotary_tables(SPEC, SEQ), slice(t, t + 1))
            rows.append(decoder(torch.tensor([[token]]), rope, attend, convolve=convolve)[0, -1].numpy())
    np.testing.assert_allclose(np.stack(rows), whole, atol=1e-5)


def test_the_conv_layer_is_transformers_lfm2_short_conv():
    from transformers import Lfm2Config
    from transformers.models.lfm2.modeling_lfm2 import Lfm2ShortConv

    from mobilekit.modeling.decoder import zero_conv_state

    config = Lfm2Config(hidden_size=SPEC.hidden_size, conv_L_cache=SPEC.conv_kernel, conv_bias=True,
                        num_hidden_layers=2, layer_types=["conv", "full_attention"])
    torch.manual_seed(1)
    theirs = Lfm2ShortConv(config, 0).eval()
    ours = conv_decoder().layers[0].conv
    ours.in_proj.load_state_dict(theirs.in_proj.state_dict())
    ours.out_proj.load_state_dict(theirs.out_proj.state_dict())
    ours.conv.weight.copy_(theirs.conv.weight[:, 0])
    ours.conv.bias.copy_(theirs.conv.bias)
    x = torch.randn(1, 7, SPEC.hidden_size)
    with torch.no_grad():
        mine = ours(0, x, lambda i, x, conv: conv(x, zero_conv_state(SPEC))[0])
        torch.testing.assert_close(mine, theirs(x), atol=1e-5, rtol=1e-5)


# fp32 on every target; Core ML keeps its states (the KV cache, the conv state) in fp16
TOLERANCE = {"executorch": 1e-4, "onnx": 1e-4, "coreml": 3e-2}


@pytest.fixture(scope="module")
def expected():
    decoder = conv_decoder()
    return eager_logits(decoder, FIRST), eager_logits(decoder, SECOND)


@pytest.mark.parametrize("target", sorted(TOLERANCE))
def test_runtime_logits_match_eager_token_by_token(target, tmp_path, expected):
    exporter = get(target)
    artefact = exporter.export(ExportRequest(decoder=conv_decoder(), scheme="fp32", max_seq_len=SEQ, bos_id=None,
                                             eos_ids=[2], out_dir=tmp_path))
    states = artefact.io["layer_states"]
    assert [(s["layer"], s["kind"]) for s in states] == [(0, "conv"), (1, "kv")]
    session = exporter.open_session(tmp_path, {"max_seq_len": SEQ, "io": artefact.io, "scheme": "fp32"})
    for tokens, prefill, want in ((FIRST, 5, expected[0]), (SECOND, 3, expected[1])):
        got = stepped_logits(session, tokens, prefill)
        want = want[prefill - 1:]
        np.testing.assert_allclose(got, want, atol=TOLERANCE[target] * np.abs(want).max())
        assert (got.argmax(-1) == want.argmax(-1)).all()


def test_executorch_runner_generates_the_eager_text(tiny_llama_dir, tmp_path):
    """ExecuTorch's C++ TextLLMRunner (the app runtime) on the conv model: it knows nothing
    of conv states, and needs to: the .pte zeroes them at position 0 itself (ExecuTorch
    serializes a mutated buffer without its initial values)."""
    import dataclasses
    import shutil

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    decoder = conv_decoder(dataclasses.replace(SPEC, vocab_size=len(tokenizer)))
    target = get("executorch")
    target.export(ExportRequest(decoder=decoder, scheme="fp32", max_seq_len=SEQ, bos_id=None, eos_ids=[],
                                out_dir=tmp_path))
    shutil.copy(tiny_llama_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    prompt = "Rivers carry water"
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        for _ in range(10):
            ids.append(int(EagerDecoder(decoder)(torch.tensor([ids]))[0, -1].argmax()))
    expected = tokenizer.decode(ids[-10:])
    for _ in range(2):  # a second runner: the state from the first never leaks in
        generated = target.generate(tmp_path, {"max_seq_len": SEQ}, prompt, 10, lambda _t: None)
        assert generated.text == expected


@pytest.mark.parametrize("target", ["executorch"])
def test_int4_runs_the_conv_layers_like_eager_int4(target, tmp_path):
    """int4 on a conv model: in_proj / out_proj are linears, quantized like any other (the
    conv taps are a [C, kernel] elementwise weight and stay float). The runtime matches the
    same quantized decoder run eagerly: the state is carried right under quantization too."""
    exporter = get(target)
    exporter.export(ExportRequest(decoder=conv_decoder(), scheme="int4", max_seq_len=SEQ, bos_id=None, eos_ids=[2],
                                  out_dir=tmp_path))
    session = exporter.open_session(tmp_path, {"max_seq_len": SEQ, "scheme": "int4"})
    quantized = conv_decoder()
    exporter.quantizer("int4")(quantized)
    conv_layer = quantized.layers[0].conv
    assert type(conv_layer.in_proj.weight).__name__ == type(conv_layer.out_proj.weight).__name__ == \
        "IntxUnpackedToInt8Tensor"
    assert type(conv_layer.conv.weight) is torch.nn.Parameter
    want = eager_logits(quantized, FIRST)[4:]
    got = stepped_logits(session, FIRST, 5)
    np.testing.assert_allclose(got, want, atol=0.05 * np.abs(want).max())
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.8
