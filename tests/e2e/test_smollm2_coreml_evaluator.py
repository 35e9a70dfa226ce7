"""The real SmolLM2-135M Core ML fp16 bundle (the app default) through mobilekit's MIL program
evaluator: what stage 2 ran on Linux, and greedy tokens equal to the reference's."""

import sys

import pytest
import torch

from mobilekit import chat, targets
from mobilekit.runtime.coreml import EVALUATOR_RUNTIME, EvaluatorSession
from mobilekit.targets.coreml import MODEL_FILE

pytestmark = [
    pytest.mark.slow,
    pytest.mark.nightly,  # ~9 minutes of numpy op-by-op evaluation; make test keeps Core ML int4
    pytest.mark.skipif(sys.platform == "darwin", reason="on macOS the real Core ML runtime runs stage 2 and generate"),
]

FRANCE = "What is the capital of France?"


def test_fp16_greedy_tokens_equal_the_reference(smollm2_bundle, smollm2_context):
    result = smollm2_bundle("coreml", "fp16")
    stage2 = result.manifest["validation"]["stage2"]
    assert stage2["runtime"].startswith(EVALUATOR_RUNTIME) and stage2["runtime"].endswith("fp16 compute")
    assert stage2["passed"], stage2["misses"]

    # 16 tokens of plain text continuation (no stop token within them), then a chat answer
    # through `generate`, stopping on <|im_end|> as apps do
    stops = result.manifest["eos_ids"]
    reference = smollm2_context.checkpoint.load_reference()

    def reference_greedy(ids, n):
        out = reference.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=n, do_sample=False, eos_token_id=stops, pad_token_id=2)
        return out[0, len(ids):].tolist()

    text_ids = smollm2_context.tokenizer("The capital of France is")["input_ids"]
    want = reference_greedy(text_ids, 16)
    assert len(want) == 16
    session = EvaluatorSession(result.path / MODEL_FILE, result.manifest["max_seq_len"])
    assert session.greedy(text_ids, 16, set(stops)) == want

    prompt = chat.format_prompt(result.manifest, FRANCE)
    chat_ids = smollm2_context.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    generated = targets.get("coreml").generate(result.path, result.manifest, prompt, 16, lambda _t: None)
    assert generated.token_ids == reference_greedy(chat_ids, 16) and "Paris" in generated.text
    assert generated.runtime.startswith(EVALUATOR_RUNTIME)
