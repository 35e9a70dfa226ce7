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


STORY = ("The baker lit her ovens before dawn and folded the dough until it felt soft. By six the shop "
         "smelled of warm crust, and a line of neighbours reached the corner of Mill Street.")


def test_degeneration_flags_loops_and_non_words_not_plain_text():
    words = STORY.split()
    plain = validate.degeneration(list(range(len(words))), STORY)
    assert not plain["degenerate"] and plain["repeated_ngrams"] == 0 and plain["nonwords"] == 0
    loop = validate.degeneration([5, 6, 7, 8, 9] * 20, "it was different because " * 20)
    assert loop["degenerate"] and loop["repeated_ngrams"] > 0.9
    garbage = "Once upona_d_m_d_s_s_s_s_s_s a robot_w_d_w paints"
    mashed = validate.degeneration(list(range(12)), garbage)
    assert mashed["degenerate"] and mashed["repeated_ngrams"] == 0 and mashed["nonwords"] > 0.3


class ScriptedSession(ArraySession):
    """Greedy always continues with `tokens`, whatever the prompt."""

    def __init__(self, tokens, vocab=50):
        logits = np.zeros((len(tokens) + 64, vocab), dtype=np.float32)
        super().__init__(logits)
        self.tokens = tokens

    def greedy(self, prompt, max_new_tokens, stop_ids=frozenset()):
        return self.tokens[:max_new_tokens]


def test_continuations_are_gated_only_where_the_reference_is_text():
    text = {i: w for i, w in enumerate(STORY.split())}
    decode = lambda ids: " ".join(text.get(i, "it_was_x") for i in ids)  # noqa: E731
    ref = validate.Reference(eval_ids=[], eval_logits=np.zeros((0, 1)), prompts={}, greedy={},
                             continuation_prompts={"chat0": [1, 2]}, continuations={"chat0": list(range(30))},
                             decode=decode)
    looping = ScriptedSession([40, 41, 42, 43] * 10)
    record = validate.measure_continuations(looping, ref)["chat0"]
    assert record["gated"] and record["degenerate"] and record["artefact"]["repeated_ngrams"] > 0.5
    assert not validate.measure_continuations(ScriptedSession(list(range(30))), ref)["chat0"]["degenerate"]
    # a reference that loops itself (a random-weight model) holds the artefact to nothing
    ref.continuations = {"chat0": [40, 41, 42, 43] * 10}
    assert validate.measure_continuations(looping, ref)["chat0"] == {
        "reference_text": decode([40, 41, 42, 43] * 10), "reference": validate.degeneration(
            [40, 41, 42, 43] * 10, decode([40, 41, 42, 43] * 10)), "gated": False}


def test_a_short_chat_answer_is_run_to_its_end_and_must_not_degenerate():
    # The reference answers in six tokens and stops (49). An int8 .pte once answered "What is
    # the capital of France?" with "L'Étoile, la Marseillaise, la femme, la femme, ...": a
    # greedy match over the reference's six tokens could not see the loop that followed.
    text = {i: w for i, w in enumerate(STORY.split())}
    decode = lambda ids: " ".join(text.get(i, "it_was_x") for i in ids)  # noqa: E731
    ref = reference()
    ref.prompts, ref.greedy, ref.stops, ref.decode = {"chat0": [1, 2]}, {"chat0": [0, 1, 2, 3, 4, 49]}, frozenset({49}), decode
    ref.answered = frozenset({"chat0"})
    answers = validate.measure(ScriptedSession([0, 1, 2, 3, 4, 49]), ref, continuations=False)
    assert answers.degenerate_answers == 0 and answers.greedy_match == 1.0
    assert answers.greedy_tokens["chat0"]["answer"]["stopped"]
    looping = ScriptedSession([5, 6, 7, 8] * 20)
    loop = validate.measure(looping, ref, continuations=False)
    assert loop.degenerate_answers == 1 and len(loop.greedy_tokens["chat0"]["artefact"]) == validate.ANSWER_TOKENS
    assert not loop.greedy_tokens["chat0"]["answer"]["stopped"]
    assert any(m.startswith("degenerate_answers = 1 exceeds") for m in validate.check(loop, quantize.INT8_BUDGET))
    # a prompt the reference does not answer and end (a random-weight model) is compared as before
    ref.answered = frozenset()
    unjudged = validate.measure(looping, ref, continuations=False)
    assert unjudged.degenerate_answers == 0 and len(unjudged.greedy_tokens["chat0"]["artefact"]) == 6
