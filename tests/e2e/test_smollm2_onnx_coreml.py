"""SmolLM2-135M bundles for ONNX Runtime GenAI and Core ML, exported through the pipeline."""

import pytest
import torch

from mobilekit import chat, targets
from mobilekit.targets import coreml as coreml_target

pytestmark = pytest.mark.slow

FRANCE = "What is the capital of France?"


def test_onnx_int4_answers_paris_through_genai(smollm2_bundle):
    result = smollm2_bundle("onnx", "int4")
    assert result.manifest["validation"]["passed"], result.manifest["validation"]["stage2"]["misses"]
    generated = targets.get("onnx").generate(
        result.path, result.manifest, chat.format_prompt(result.manifest, FRANCE), 24, lambda _t: None)
    assert "Paris" in generated.text
    assert (result.path / "model.onnx.data").stat().st_size < 90_000_000


def test_onnx_fp32_genai_greedy_equals_reference(smollm2_bundle, smollm2_context):
    result = smollm2_bundle("onnx", "fp32")
    prompt = chat.format_prompt(result.manifest, FRANCE)
    generated = targets.get("onnx").generate(result.path, result.manifest, prompt, 32, lambda _t: None)
    tokenizer = smollm2_context.tokenizer
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    out = smollm2_context.checkpoint.load_reference().generate(
        torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=32, do_sample=False, eos_token_id=result.manifest["eos_ids"], pad_token_id=2)
    assert generated.token_ids == out[0, len(ids):].tolist()
    assert generated.token_ids[-1] in result.manifest["eos_ids"]  # stopped on <|im_end|>
    assert result.manifest["validation"]["stage2"]["app_runtime"]["greedy_match"] == 1.0


def test_coreml_int4_passes_spec_and_round_trip(smollm2_bundle):
    result = smollm2_bundle("coreml", "int4")
    check = coreml_target.check_spec(result.path, "int4")
    assert check["weights"]["int4_block_sizes"] == [32]
    stage2 = result.manifest["validation"]["stage2"]
    assert stage2["passed"], stage2["misses"]
    assert result.manifest["io"]["states"][0]["name"] == "keyCache"
    assert result.manifest["export"]["size_bytes"] < 100e6
