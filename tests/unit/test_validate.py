import numpy as np

from mobilekit import quantize, validate
from mobilekit.runtime import Session


class ArraySession(Session):
    """Replays fixed per-position logits, as a runtime with a KV cache would."""

    def __init__(self, logits):
        super().__init__(max_seq_len=len(logits))
        self.logits = logits

    def _run(self, tokens):
        return self.logits[self.position + len(tokens) - 1]


def reference(seed=0, t=40, v=50):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (t, v)).astype(np.float32)
    ids = rng.integers(0, v, t).tolist()
    return validate.Reference(eval_ids=ids, eval_logits=logits, prompts={}, greedy={})


def test_identical_logits_pass_fp32():
    ref = reference()
    metrics = validate.measure(ArraySession(ref.eval_logits), ref)
    assert metrics.max_abs_logit_error == 0 and metrics.top1_agreement == 1.0
    assert abs(metrics.ppl_increase_pct) < 1e-9
    assert validate.check(metrics, quantize.FP32_BUDGET) == []


def test_noisy_logits_fail_with_the_margin():
    ref = reference()
    noisy = ref.eval_logits + np.random.default_rng(1).normal(0, 2, ref.eval_logits.shape).astype(np.float32)
    metrics = validate.measure(ArraySession(noisy), ref)
    misses = validate.check(metrics, quantize.FP32_BUDGET)
    assert any(m.startswith("max_abs_logit_error") and "exceeds its budget" in m for m in misses)
    assert any(m.startswith("top1_agreement") and "is below its budget" in m for m in misses)
