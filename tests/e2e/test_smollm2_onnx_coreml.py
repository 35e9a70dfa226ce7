"""SmolLM2-135M bundles for ONNX Runtime GenAI and Core ML, exported through the pipeline."""

import pytest
import torch

from mobilekit import chat, recipes, targets
from mobilekit.targets import coreml as coreml_target

pytestmark = pytest.mark.slow

FRANCE = "What is the capital of France?"
DEFAULT = recipes.get("smollm2-135m").default_quant  # what `mobilekit export smollm2-135m` writes


def test_onnx_default_answers_paris_through_genai(smollm2_bundle):
    result = smollm2_bundle("onnx", DEFAULT["onnx"])
    assert result.manifest["validation"]["passed"], result.manifest["validation"]["stage2"]["misses"]
    generated = targets.get("onnx").generate(
        result.path, result.manifest, chat.format_prompt(result.manifest, FRANCE), 24, lambda _t: None)
    assert "Paris" in generated.text


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


def test_coreml_int4_keeps_the_model(smollm2_bundle):
    """int4 with float offsets keeps SmolLM2 within issue 21's goal on the 80 validation
    positions (measured: ppl +4.95%, top-1 86.2%, one loop in four continuations, 85.8 MB; the
    symmetric int4 before it: +5.9%, 73.8%, 89.5 MB). It is the recipe's Core ML default. The
    loop allowance is at its limit, so a second loop on another machine's numpy is reported
    but tolerated here; every other budget must hold, with room for such drift."""
    result = smollm2_bundle("coreml", "int4", keep_failed=True)
    check = coreml_target.check_spec(result.path, "int4")
    assert check["weights"]["int4_block_sizes"] == [32]
    stage2 = result.manifest["validation"]["stage2"]
    assert all(miss.startswith("degenerate_continuations") for miss in stage2["misses"]), stage2["misses"]
    assert stage2["metrics"]["garbled_continuations"] == 0
    assert stage2["metrics"]["top1_agreement"] >= 0.8 and stage2["metrics"]["ppl_increase_pct"] <= 7
    assert result.manifest["io"]["states"][0]["name"] == "keyCache"
    assert result.manifest["export"]["size_bytes"] < 89.5e6  # no larger than the symmetric int4 was
