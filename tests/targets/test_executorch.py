"""The ExecuTorch target on a tiny Llama: each scheme exported through the real pipeline,
run through ExecuTorch's pybindings (stage 2) and its C++ LLM runner."""

import json

import pytest

from mobilekit import pipeline, quantize
from mobilekit.targets import get

SCHEMES = get("executorch").schemes


@pytest.fixture(scope="module")
def context(tiny_llama_dir):
    return pipeline.make_context(None, str(tiny_llama_dir), 128)


@pytest.fixture(scope="module")
def bundles(context, export_every_scheme):
    return export_every_scheme(context, "executorch")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_validates_within_budget(bundles, scheme):
    validation = bundles[scheme].manifest["validation"]
    assert validation["stage1"]["passed"], validation["stage1"]["misses"]
    assert validation["stage2"]["passed"], validation["stage2"]["misses"]
    assert validation["stage2"]["budget"] == quantize.get(scheme).budget.as_dict()


def test_fp32_is_near_exact(bundles):
    metrics = bundles["fp32"].manifest["validation"]["stage2"]["metrics"]
    assert metrics["max_abs_logit_error"] < 1e-4
    assert metrics["greedy_match"] == 1.0


def test_quantized_files_are_smaller(bundles):
    sizes = {s: bundles[s].path.joinpath("model.pte").stat().st_size for s in SCHEMES}
    assert sizes["int4"] < sizes["int8"] < sizes["fp32"]


def test_manifest_describes_the_runner_contract(bundles):
    result = bundles["int4"]
    manifest = json.loads((result.path / "mobilekit.json").read_text())
    methods = manifest["io"]["constant_methods"]
    assert methods["get_eos_ids"] == manifest["eos_ids"]
    assert methods["get_max_seq_len"] == 128 and methods["use_kv_cache"] is True
    assert {"model.pte", "tokenizer.json", "tokenizer_config.json"} <= set(manifest["files"])
    assert manifest["io"]["kv_cache"]["shape_per_layer"] == [1, 128, 2, 16]


def test_runner_greedy_equals_reference(bundles, context):
    """ExecuTorch's C++ TextLLMRunner on the fp32 .pte produces the reference's greedy text."""
    from mobilekit import chat

    result = bundles["fp32"]
    target = get("executorch")
    prompt_text = "Rivers carry water"
    generated = target.generate(result.path, result.manifest, prompt_text, 12, lambda _t: None)
    tokenizer = context.tokenizer
    ids = tokenizer(prompt_text)["input_ids"]
    model = context.checkpoint.load_reference()
    import torch

    out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                         eos_token_id=result.manifest["eos_ids"], pad_token_id=0)
    expected = tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
    assert generated.text.replace("<|im_end|>", "") == expected
    assert generated.decode_tokens_per_s > 0
    assert chat.format_prompt(result.manifest, "hi").startswith("<|im_start|>user")


def test_cli_validate_and_generate(bundles, tmp_path):
    import shutil

    from click.testing import CliRunner

    from mobilekit.cli import main

    copy = tmp_path / "bundle"
    shutil.copytree(bundles["int8"].path, copy)
    result = CliRunner().invoke(main, ["validate", str(copy)])
    assert result.exit_code == 0, result.output
    assert "stage2" in result.output and "pass" in result.output

    result = CliRunner().invoke(main, ["generate", str(copy), "Rivers carry", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    assert "ExecuTorch TextLLMRunner" in result.output
    assert "PyTorchObserver" not in result.output  # the runner's own stdout is silenced

    (copy / "tokenizer.json").write_text("{}")
    result = CliRunner().invoke(main, ["validate", str(copy)])
    assert result.exit_code == 1
    assert "tokenizer.json does not match its sha256" in result.output


# --- Paths the tiny Llama does not take. Every family's full export is checked against
# transformers in tests/families; these pin the pieces that could pass there by luck
# (128 tokens, one key block) or fail without saying where.


def _random_decoder(family: str, seed: int = 0):
    import torch

    from mobilekit import families
    from mobilekit.modeling import Decoder

    registered = families.get(family)
    spec = registered.spec_from_config(registered.tiny_config)
    torch.manual_seed(seed)
    decoder = Decoder(spec).eval().requires_grad_(False)
    for param in decoder.parameters():
        if param.ndim == 1:  # norms at 1 and biases at 0 would hide a wrong swap
            param.add_(torch.randn_like(param) * 0.1)
    return decoder


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("window", [None, 5])
def test_explicit_attention_matches_the_reference(window, softcap):
    """The softcap path (Gemma 2) over a full-length cache whose tail holds stale values."""
    import torch

    from mobilekit.modeling.decoder import attention, attention_mask
    from mobilekit.lowering.executorch import explicit_attention

    torch.manual_seed(0)
    heads, kv_heads, hd, cache_len, start, t = 4, 2, 16, 32, 11, 4
    q = torch.randn(1, t, heads, hd)
    k_cache, v_cache = torch.randn(1, cache_len, kv_heads, hd), torch.randn(1, cache_len, kv_heads, hd)
    queries = torch.arange(start, start + t)
    end = start + t
    want = attention(q, k_cache[:, :end], v_cache[:, :end], attention_mask(queries, torch.arange(end), window),
                     0.2, softcap)
    allowed = attention_mask(queries, torch.arange(cache_len), window)
    mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min).repeat(heads // kv_heads, 1)
    got = explicit_attention(q, k_cache, v_cache, mask, 0.2, softcap)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["gpt_neox", "phi", "phi3", "gemma3"])
def test_in_graph_rotary_equals_the_decoder_rotary(family):
    """Partial rotary (GPT-NeoX 4 of 16 lanes, Phi-2 half) through the full-width matrix and
    padded cos/sin; LongRoPE's cos/sin scale (Phi-3); Gemma 3's local and global tables."""
    import torch

    from mobilekit.modeling.decoder import Rotary, rotary_cos_sin
    from mobilekit.lowering.executorch import ExecuTorchDecoder, MatmulRotary

    decoder = _random_decoder(family)
    spec = decoder.spec
    wrapper = ExecuTorchDecoder(decoder, 64)
    positions = torch.arange(37, 45)
    x = torch.randn(1, len(positions), spec.num_heads, spec.head_dim)
    ours = wrapper._rope(positions.float())
    assert sorted(ours) == sorted(spec.rope_kinds)
    for kind, (cos, sin) in ours.items():
        ref_cos, ref_sin = rotary_cos_sin(spec, positions, kind)
        want = Rotary()(x, ref_cos[:, None], ref_sin[:, None])
        got = MatmulRotary(spec.head_dim, spec.rotary_width)(x, cos[:, None], sin[:, None])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        if spec.rotary_width < spec.head_dim:
            assert torch.equal(got[..., spec.rotary_width:], x[..., spec.rotary_width:])


def test_linear_mean_layer_norm_equals_layer_norm():
    import torch

    from mobilekit.modeling.decoder import LayerNorm
    from mobilekit.lowering.executorch import LinearMeanLayerNorm

    norm = LayerNorm(64, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 7, 64) * 3 + 1
    torch.testing.assert_close(LinearMeanLayerNorm(norm)(x), norm(x), atol=1e-5, rtol=1e-5)


def test_tanh_gelu_mlp_lowers_exactly(tmp_path):
    """XNNPACK runs aten.gelu(approximate="tanh") as the exact-erf GELU; the swapped MLP
    (Phi-2, Gemma) must match the decoder's tanh GELU through the real runtime."""
    import copy

    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    from mobilekit.lowering.executorch import xnnpack_friendly

    decoder = _random_decoder("phi")
    assert decoder.spec.activation == "gelu_tanh"
    reference = decoder.layers[0].mlp
    swapped = copy.deepcopy(reference)
    holder = torch.nn.ModuleDict({"mlp": swapped})
    xnnpack_friendly(holder, decoder.spec)
    x = torch.randn(1, 9, decoder.spec.hidden_size) * 2
    program = to_edge_transform_and_lower(torch.export.export(holder["mlp"], (x,)),
                                          partitioner=[XnnpackPartitioner()]).to_executorch()
    (tmp_path / "mlp.pte").write_bytes(program.buffer)
    (got,) = Runtime.get().load_program(tmp_path / "mlp.pte").load_method("forward").execute([x])
    torch.testing.assert_close(got, reference(x), atol=2e-6, rtol=1e-5)


def test_cache_notes_name_windowed_and_explicit_layers():
    from mobilekit.targets.executorch import cache_notes

    gemma2 = cache_notes(_random_decoder("gemma2").spec)
    assert gemma2["attention"] == {"explicit": [0, 1, 2]}
    assert gemma2["sliding_window"]["window"] == 16 and gemma2["sliding_window"]["layers"] == [0, 2]
    assert "full-length" in gemma2["sliding_window"]["note"]
    assert gemma2["attention_softcap"] == 3.0
    gemma3 = cache_notes(_random_decoder("gemma3").spec)
    assert gemma3["attention"] == {"custom_sdpa_masked": [0, 1], "custom_sdpa": [2]}
    assert cache_notes(_random_decoder("llama").spec) == {"attention": {"custom_sdpa": [0, 1]}}


def test_sliding_window_past_the_first_key_block(tmp_path):
    """Gemma 3 (sliding + full layers, local/global rotary, q/k norms) as a .pte with a
    600-token cache, run by ExecuTorch past 512 keys: custom_sdpa's flash kernel reads keys
    in blocks of 512, so there whole blocks are masked for a query. The .pte must follow the
    eager decoder token for token, over prefill and decode."""
    import copy

    import numpy as np
    import torch

    from mobilekit.runtime.eager import EagerSession
    from mobilekit.runtime.executorch import ExecuTorchSession
    from mobilekit.targets import ExportRequest

    decoder = _random_decoder("gemma3")
    eager = EagerSession(copy.deepcopy(decoder), 600)
    request = ExportRequest(decoder=decoder, scheme="fp32", max_seq_len=600, bos_id=None, eos_ids=[2],
                            out_dir=tmp_path)
    artefact = get("executorch").export(request)
    assert artefact.io["kv_cache"]["sliding_window"]["layers"] == [0, 1]
    session = ExecuTorchSession(tmp_path / "model.pte", 600)

    ids = torch.randint(0, decoder.spec.vocab_size, (560,), generator=torch.Generator().manual_seed(1)).tolist()
    for s in (eager, session):
        s.reset()
    steps = [ids[:530]] + [[t] for t in ids[530:]]
    for chunk in steps:
        np.testing.assert_allclose(session.step(chunk), eager.step(chunk), atol=1e-4, rtol=1e-4)
