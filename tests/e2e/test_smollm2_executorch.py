"""SmolLM2-135M through ExecuTorch's own C++ LLM runner (TextLLMRunner), as apps run it."""

import pytest
import torch

from mobilekit import chat, recipes, targets, validate

pytestmark = pytest.mark.slow

FRANCE = "What is the capital of France?"
STORY = "Write a short story about a robot learning to paint."
DEFAULT = recipes.get("smollm2-135m").default_quant["executorch"]  # make demo's bundle


def runner_text(result, prompt, max_new_tokens):
    return targets.get("executorch").generate(result.path, result.manifest, prompt, max_new_tokens, lambda _t: None)


def test_default_answers_paris_stops_and_tells_a_story(smollm2_bundle):
    """The recipe's default (make demo's bundle) through the C++ runner."""
    result = smollm2_bundle("executorch", DEFAULT)
    assert result.manifest["validation"]["passed"], result.manifest["validation"]["stage2"]["misses"]
    generated = runner_text(result, chat.format_prompt(result.manifest, FRANCE), 64)
    assert "Paris" in generated.text
    # The runner must stop on <|im_end|> (get_eos_ids), not run on to max_new_tokens.
    assert generated.text.rstrip().endswith("<|im_end|>") or len(generated.text) < 400
    story = runner_text(result, chat.format_prompt(result.manifest, STORY), 120).text
    words = story.replace("<|im_end|>", "").split()
    assert len(words) > 40 and not validate.degeneration(list(range(len(words))), story)["nonwords"]


# In `make test` while fp32 is the recipe's default (the same bundle, shared); otherwise a
# second real export (~400 s), left to the nightly run.
@(pytest.mark.nightly if DEFAULT != "fp32" else lambda test: test)
def test_fp32_runner_greedy_equals_reference(smollm2_bundle, smollm2_context):
    result = smollm2_bundle("executorch", "fp32")
    assert result.manifest["validation"]["stage2"]["metrics"]["greedy_match"] == 1.0
    prompt = chat.format_prompt(result.manifest, FRANCE)
    generated = runner_text(result, prompt, 32)

    tokenizer = smollm2_context.tokenizer
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    model = smollm2_context.checkpoint.load_reference()
    out = model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False,
                         eos_token_id=result.manifest["eos_ids"], pad_token_id=2)
    expected = tokenizer.decode(out[0, len(ids):])
    assert generated.text == expected


def test_reference_answer_is_paris(smollm2_context):
    reference = smollm2_context.reference(lambda _m: None)
    text = smollm2_context.tokenizer.decode(reference.greedy["chat0"])
    assert "Paris" in text and validate.fixed_prompts()["chat"][0] == FRANCE
