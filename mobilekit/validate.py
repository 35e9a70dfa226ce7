"""Validation: the artefact (through its runtime) against the reference (transformers
eager fp32), on fixed inputs shipped in the package.

Both stages use the same measurements, so a loss is pinned to one stage:
  stage 1 — the mobilekit decoder (eager) vs the reference: is the port right?
  stage 2 — the exported artefact through its runtime vs the reference: are lowering and
            quantization right?

Measurements:
  teacher-forced pass over the bundled text: prefill PREFILL_TOKENS, then one token per
  step through the runtime's KV cache -> per-position max |logit error|, minimum and mean
  cosine, top-1 agreement, and perplexity (increase vs reference, %);
  greedy continuation of each fixed prompt -> fraction of the reference's tokens matched
  before the first divergence (the minimum over prompts);
  short chat answers (the fixed chat prompts whose reference answers and stops, "The capital
  of France is Paris.") -> the artefact's answer, run on to its stop token or ANSWER_TOKENS,
  must not degenerate. A quantized model may word its answer differently, but one that
  answers a question with a loop ("L'Étoile, la femme, la femme, ...") is broken however
  close its logits are on the bundled text;
  long greedy continuations (CONTINUATION_TOKENS, two chat and two plain story prompts, the
  whole prompt prefilled in one call as apps do) -> degeneration: repeated token n-grams
  and non-words. A model departs from its reference within a few tokens at 4 bits, so the
  continuation is not compared token by token; it must stay text. Gated only where the
  reference's own continuation is text (random-weight tiny models are exempt that way).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Callable

import numpy as np
import torch

from mobilekit.quantize import Budget
from mobilekit.tiny import RANDOM_WEIGHTS

EVAL_TOKENS = 96
PREFILL_TOKENS = 16
GREEDY_TOKENS = 32
ANSWER_TOKENS = 64
CONTINUATION_TOKENS = 128


@dataclass
class Reference:
    """Reference outputs on the fixed inputs, computed once per checkpoint."""

    eval_ids: list[int]
    eval_logits: np.ndarray  # [T, V] float32
    prompts: dict[str, list[int]]  # name -> prompt token ids
    greedy: dict[str, list[int]]  # name -> reference greedy continuation
    # long continuations, for degeneration (empty for references built by hand in tests)
    continuation_prompts: dict[str, list[int]] = field(default_factory=dict)
    continuations: dict[str, list[int]] = field(default_factory=dict)
    stops: frozenset = frozenset()
    decode: Callable[[list[int]], str] | None = None
    # prompts whose reference answer is text that ends in a stop token: the artefact's answer
    # to them is judged for degeneration (empty for random-weight tiny models)
    answered: frozenset = frozenset()


def eval_text() -> str:
    return (resources.files("mobilekit") / "data" / "eval.txt").read_text()


def fixed_prompts() -> dict:
    return json.loads((resources.files("mobilekit") / "data" / "prompts.json").read_text())


def encode_prompt(tokenizer, text: str, chat: bool) -> list[int]:
    """Token ids of `text`, wrapped in the chat template when the tokenizer has one."""
    if chat and getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        return tokenizer(rendered, add_special_tokens=False)["input_ids"]
    return tokenizer(text)["input_ids"]


def stop_ids(tokenizer, config: dict, recipe=None) -> set[int]:
    """Token ids that end generation: config.json's eos_token_id (one id or a list, e.g.
    Llama 3.1's three), the tokenizer's eos, and each of the recipe's stop strings that is a
    single special token (e.g. Gemma's <end_of_turn>). A recipe with special_ids =
    "tokenizer" ignores config.json (Fox-1: its config has bos/eos swapped)."""
    ids = set()
    if recipe is None or recipe.special_ids == "config":
        configured = config.get("eos_token_id")
        ids.update(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if recipe is not None:
        added = tokenizer.get_added_vocab()
        ids.update(added[text] for text in recipe.stop_strings if text in added)
    return ids


@torch.no_grad()
def compute_reference(model, tokenizer, max_seq_len: int, greedy_tokens: int = GREEDY_TOKENS,
                      recipe=None) -> Reference:
    eval_ids = tokenizer(eval_text())["input_ids"][: min(EVAL_TOKENS, max_seq_len)]
    logits = model(torch.tensor([eval_ids])).logits[0].float().numpy()
    prompts = {}
    spec = fixed_prompts()
    for i, text in enumerate(spec["chat"]):
        prompts[f"chat{i}"] = encode_prompt(tokenizer, text, chat=True)
    for i, text in enumerate(spec["text"]):
        prompts[f"text{i}"] = encode_prompt(tokenizer, text, chat=False)
    stops = stop_ids(tokenizer, model.config.to_dict(), recipe)
    greedy = {}
    for name, ids in prompts.items():
        budget = min(greedy_tokens, max_seq_len - len(ids))
        greedy[name] = _reference_greedy(model, ids, budget, stops)
    long_prompts = {}
    for kind, texts in spec["continuations"].items():
        for i, text in enumerate(texts):
            long_prompts[f"{kind}{i}"] = encode_prompt(tokenizer, text, chat=kind == "chat")
    long_prompts = {name: ids for name, ids in long_prompts.items() if len(ids) < max_seq_len}
    if model.config.to_dict().get(RANDOM_WEIGHTS):  # mobilekit.tiny's: exempt, nothing to judge
        long_prompts = {}
    continuations = {name: _reference_greedy(model, ids, min(CONTINUATION_TOKENS, max_seq_len - len(ids)), stops)
                     for name, ids in long_prompts.items()}
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    answered = frozenset(
        name for name, ids in greedy.items()
        if name.startswith("chat") and not model.config.to_dict().get(RANDOM_WEIGHTS)
        and ids and ids[-1] in stops and not degeneration(ids[:-1], decode(ids[:-1]))["degenerate"])
    return Reference(eval_ids, logits, prompts, greedy, long_prompts, continuations, frozenset(stops),
                     decode, answered)


def _reference_greedy(model, ids: list[int], n: int, stops: set[int]) -> list[int]:
    out = model.generate(
        torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=n, do_sample=False, eos_token_id=sorted(stops) or None,
        pad_token_id=next(iter(stops), 0),
    )
    return out[0, len(ids):].tolist()


@dataclass
class Metrics:
    max_abs_logit_error: float
    min_cosine: float
    mean_cosine: float
    top1_agreement: float
    greedy_match: float
    reference_ppl: float
    ppl: float
    ppl_increase_pct: float
    positions: int
    # long continuations whose reference is text and whose artefact's is not (see degeneration()):
    # all of them (loops or non-words), and those with non-words
    degenerate_continuations: int = 0
    garbled_continuations: int = 0
    # short chat answers (Reference.answered) that degenerate
    degenerate_answers: int = 0
    greedy_tokens: dict = field(default_factory=dict)  # name -> {"reference": [...], "artefact": [...]}
    continuations: dict = field(default_factory=dict)  # name -> texts and degeneration of both


def measure(session, reference: Reference, continuations: bool = True) -> Metrics:
    """All the measurements on `session`; `continuations=False` skips the long ones (stage 1:
    a port error shows in the logits long before, and a 7B eager decoder is slow)."""
    ids = reference.eval_ids
    prefill = min(PREFILL_TOKENS, len(ids) - 1)
    session.reset()
    got = [session.step(ids[:prefill])]
    for token in ids[prefill:-1]:
        got.append(session.step([token]))
    got = np.stack(got)  # logits at positions prefill-1 .. T-2
    want = reference.eval_logits[prefill - 1 : len(ids) - 1]
    targets = np.array(ids[prefill:])

    cos = (got * want).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(want, axis=-1) + 1e-12)
    ref_ppl, ppl = _perplexity(want, targets), _perplexity(got, targets)

    greedy, matches = {}, []
    for name, prompt in reference.prompts.items():
        expected = reference.greedy[name]
        if name in reference.answered:  # run the answer on to its end, wherever that is
            produced = session.greedy(prompt, max(ANSWER_TOKENS, len(expected)), stop_ids=set(reference.stops))
        else:
            produced = session.greedy(prompt, len(expected), stop_ids=set())
        greedy[name] = {"reference": expected, "artefact": produced}
        if name in reference.answered:
            answer = [t for t in produced if t not in reference.stops]
            greedy[name]["answer"] = {"text": reference.decode(answer), "stopped": bool(produced) and produced[-1] in reference.stops,
                                      **degeneration(answer, reference.decode(answer))}
        matches.append(_common_prefix(expected, produced) / max(len(expected), 1))
    continuations = measure_continuations(session, reference) if continuations else {}

    return Metrics(
        max_abs_logit_error=float(np.abs(got - want).max()),
        min_cosine=float(cos.min()),
        mean_cosine=float(cos.mean()),
        top1_agreement=float((got.argmax(-1) == want.argmax(-1)).mean()),
        greedy_match=float(min(matches)) if matches else 1.0,
        reference_ppl=ref_ppl,
        ppl=ppl,
        ppl_increase_pct=100.0 * (ppl - ref_ppl) / ref_ppl,
        positions=len(targets),
        degenerate_continuations=sum(c.get("degenerate", False) for c in continuations.values()),
        garbled_continuations=sum(c.get("garbled", False) for c in continuations.values()),
        degenerate_answers=sum(g.get("answer", {}).get("degenerate", False) for g in greedy.values()),
        greedy_tokens=greedy,
        continuations=continuations,
    )


# A continuation is degenerate when more than this fraction of its token 4-grams repeat an
# earlier one (a loop: "it was different because it was different because ...") or of its
# words are not words ("upona_d_m_d_s_s_s_s"). Measured on SmolLM2-135M, 128 tokens: its
# reference story repeats itself from token ~80 (0.34 repeated 4-grams), the int4 loops
# above are at 0.78; non-words are 0 in the reference's text (README "Validation").
NGRAM = 4
MAX_REPEATED_NGRAMS = 0.5
MAX_NONWORDS = 0.1
_WORD_EDGES = "\"'()[]{}<>.,;:!?*`«»“”‘’#"


def degeneration(ids: list[int], text: str) -> dict:
    """Repetition (fraction of token n-grams seen earlier in the same continuation) and
    non-words (fraction of whitespace-separated words that mix letters with symbols, e.g.
    "upona_d_m", or run past 30 characters) of one continuation."""
    grams = [tuple(ids[i:i + NGRAM]) for i in range(len(ids) - NGRAM + 1)]
    repeated = 1 - len(set(grams)) / len(grams) if grams else 0.0
    words = [w.strip(_WORD_EDGES) for w in text.split()]
    words = [w for w in words if any(c.isalpha() for c in w)]
    odd = [w for w in words if len(w) > 30 or any(not (c.isalnum() or c in "'’-.&/") for c in w)]
    nonwords = len(odd) / len(words) if words else 0.0
    return {"repeated_ngrams": round(repeated, 4), "nonwords": round(nonwords, 4), "tokens": len(ids),
            "degenerate": repeated > MAX_REPEATED_NGRAMS or nonwords > MAX_NONWORDS}


def measure_continuations(session, reference: Reference) -> dict:
    """Each long prompt's greedy continuation through `session` (prompt prefilled in one
    call), with both texts and their degeneration. Where the reference's own continuation
    degenerates there is nothing to hold the artefact to: not run, recorded as ungated."""
    record = {}
    for name, prompt in reference.continuation_prompts.items():
        expected = reference.continuations[name]
        want = degeneration(expected, reference.decode(expected))
        entry = {"reference_text": reference.decode(expected), "reference": want, "gated": not want["degenerate"]}
        if entry["gated"]:
            produced = session.greedy(prompt, CONTINUATION_TOKENS, stop_ids=set(reference.stops))
            produced = [t for t in produced if t not in reference.stops]
            entry["artefact_text"] = reference.decode(produced)
            entry["artefact"] = degeneration(produced, entry["artefact_text"])
            entry["degenerate"] = entry["artefact"]["degenerate"]
            entry["garbled"] = entry["artefact"]["nonwords"] > MAX_NONWORDS
        record[name] = entry
    return record


def _perplexity(logits: np.ndarray, targets: np.ndarray) -> float:
    logits = logits.astype(np.float64)
    m = logits.max(-1, keepdims=True)
    logz = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[:, 0]
    nll = logz - logits[np.arange(len(targets)), targets]
    return float(math.exp(nll.mean()))


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# metric name -> (budget field, "max" if the metric must stay below the bound)
_CHECKS = {
    "max_abs_logit_error": ("max_abs_logit_error", "max"),
    "min_cosine": ("min_cosine", "min"),
    "mean_cosine": ("min_mean_cosine", "min"),
    "top1_agreement": ("min_top1_agreement", "min"),
    "greedy_match": ("min_greedy_match", "min"),
    "ppl_increase_pct": ("max_ppl_increase_pct", "max"),
    "degenerate_continuations": ("max_degenerate_continuations", "max"),
    "garbled_continuations": ("max_garbled_continuations", "max"),
    "degenerate_answers": ("max_degenerate_answers", "max"),
}


def check(metrics: Metrics, budget: Budget) -> list[str]:
    """Messages for each budget the metrics miss, saying by how much; empty = pass."""
    misses = []
    for metric, (bound_name, kind) in _CHECKS.items():
        bound = getattr(budget, bound_name)
        value = getattr(metrics, metric)
        if bound is None:
            continue
        if math.isnan(value):  # NaN compares false with every bound: it must still fail
            misses.append(f"{metric} is NaN (the artefact's logits are not finite)")
            continue
        if kind == "max" and value > bound:
            misses.append(f"{metric} = {value:.4g} exceeds its budget {bound:.4g} by {value - bound:.4g}")
        if kind == "min" and value < bound:
            misses.append(f"{metric} = {value:.4g} is below its budget {bound:.4g} by {bound - value:.4g}")
    return misses


def stage_record(metrics: Metrics, budget: Budget, runtime: str) -> dict:
    misses = check(metrics, budget)
    record = asdict(metrics)
    record.pop("greedy_tokens")
    record.pop("continuations")
    return {
        "runtime": runtime,
        "metrics": record,
        "greedy_tokens": metrics.greedy_tokens,
        "continuations": metrics.continuations,
        "budget": budget.as_dict(),
        "passed": not misses,
        "misses": misses,
    }


def app_runtime_check(target, bundle_dir, reference: Reference, budget: Budget) -> dict | None:
    """Greedy continuations through the target's app runtime (e.g. ONNX Runtime GenAI, which
    runs its own cache and search), compared with the reference's; None if the target has
    no separate app runtime to check."""
    produced, matches = {}, []
    for name, prompt in reference.prompts.items():
        expected = reference.greedy[name]
        tokens = target.app_runtime_greedy(bundle_dir, prompt, len(expected))
        if tokens is None:
            return None
        produced[name] = {"reference": expected, "artefact": tokens}
        matches.append(_common_prefix(expected, tokens) / max(len(expected), 1))
    match = float(min(matches)) if matches else 1.0
    misses = []
    if budget.min_greedy_match is not None and match < budget.min_greedy_match:
        misses.append(f"app-runtime greedy_match = {match:.4g} is below its budget "
                      f"{budget.min_greedy_match:.4g} by {budget.min_greedy_match - match:.4g}")
    return {"runtime": target.runtime, "greedy_match": match, "greedy_tokens": produced,
            "passed": not misses, "misses": misses}
