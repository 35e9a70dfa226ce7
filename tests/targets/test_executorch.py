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
