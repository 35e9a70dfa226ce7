"""A bundle's README.md: a Hugging Face Hub model card written from its manifest.

Everything in it comes from mobilekit.json (no torch, nothing measured again): YAML front
matter the Hub reads, the validation table with its budgets, the size, the I/O contract,
and how to load the bundle on Android and iOS. (No speed: `mobilekit bench` measures on the
machine it runs on and does not write into the bundle.) bundle.write_manifest writes it beside the manifest each time, so the two agree;
like the manifest, the card is not in the manifest's file list.
"""

from __future__ import annotations

import json

CARD = "README.md"

# The Hub's library name and tags per target (the Hub's model-libraries list names
# executorch; the ONNX and Core ML cards are found by their tags).
HUB_LIBRARY = {"executorch": "executorch", "onnx": "onnx", "coreml": "coreml", "litert": "litert-lm"}

# (metric in the validation record, label, format, budget key, "min"/"max")
VALIDATION_ROWS = (
    ("max_abs_logit_error", "max abs logit error", "{:.3g}", "max_abs_logit_error", "max"),
    ("mean_cosine", "mean cosine", "{:.4f}", "min_mean_cosine", "min"),
    ("top1_agreement", "top-1 agreement", "{:.1%}", "min_top1_agreement", "min"),
    ("greedy_match", "greedy match", "{:.1%}", "min_greedy_match", "min"),
    ("ppl_increase_pct", "perplexity increase", "{:+.2f}%", "max_ppl_increase_pct", "max"),
    ("degenerate_continuations", "looping continuations (of 4)", "{}", "max_degenerate_continuations", "max"),
    ("garbled_continuations", "garbled continuations", "{}", "max_garbled_continuations", "max"),
    ("degenerate_answers", "degenerate chat answers", "{}", "max_degenerate_answers", "max"),
)


# Hub license ids the recipes use; any other license is `other` with its name (the Hub's rule).
HUB_LICENSES = {"apache-2.0", "mit", "gemma", "llama3.1", "llama3.2", "cc-by-nc-4.0", "apple-ascl", "other"}


def _license_lines(license_text: str, base_model: str | None) -> list[str]:
    lowered = license_text.strip().lower()
    if lowered in HUB_LICENSES:
        return [f"license: {_yaml_scalar(lowered)}"]
    lines = ["license: other", f"license_name: {_yaml_scalar(lowered.replace(' ', '-'))}"]
    if base_model:  # the license text lives with the base model
        lines.append(f"license_link: {_yaml_scalar(f'https://huggingface.co/{base_model}')}")
    return lines


def _yaml_scalar(value) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML scalar


def _front_matter(manifest: dict) -> str:
    checkpoint = manifest.get("checkpoint") or {}
    base = checkpoint.get("repo")
    target = manifest.get("target", "")
    tags = ["mobilekit", target, manifest.get("quant", ""), "on-device", manifest.get("family", "")]
    lines = ["---", f"library_name: {HUB_LIBRARY.get(target, target)}", "pipeline_tag: text-generation"]
    if manifest.get("license"):
        lines += _license_lines(manifest["license"], base)
    if base:
        lines.append(f"base_model: {_yaml_scalar(base)}")
        if checkpoint.get("revision"):
            lines.append(f"base_model_revision: {_yaml_scalar(checkpoint['revision'])}")
    lines.append("tags:")
    lines += [f"- {_yaml_scalar(tag)}" for tag in dict.fromkeys(t for t in tags if t)]
    return "\n".join(lines + ["---"])


def _validation_section(manifest: dict) -> list[str]:
    validation = manifest.get("validation") or {}
    if not validation.get("performed"):
        return ["## Validation", "", "Not validated: the bundle was exported with `--no-validate`.", ""]
    lines = ["## Validation", "",
             f"Against {validation.get('reference', 'the reference')}, teacher-forced on "
             f"{validation.get('eval_tokens', '?')} tokens and four long continuations "
             f"({'passed' if validation.get('passed') else 'FAILED'}; `mobilekit validate BUNDLE` re-runs it).", ""]
    stages = [(name, validation[name]) for name in ("stage1", "stage2") if isinstance(validation.get(name), dict)]
    stages = [(name, record) for name, record in stages if "metrics" in record]
    if not stages:
        return lines
    lines += ["| metric | " + " | ".join(f"{name} ({record.get('runtime', '')})" for name, record in stages)
              + " | budget |", "|---|" + "---|" * (len(stages) + 1)]
    budget = stages[-1][1].get("budget") or {}
    for key, label, fmt, budget_key, kind in VALIDATION_ROWS:
        values = [record["metrics"].get(key) for _, record in stages]
        if all(v is None for v in values):
            continue
        shown = [fmt.format(v) if v is not None else "" for v in values]
        limit = budget.get(budget_key)
        limit_text = "" if limit is None else ("≥ " if kind == "min" else "≤ ") + fmt.format(limit)
        lines.append(f"| {label} | " + " | ".join(shown) + f" | {limit_text} |")
    return lines + [""]


def _io_section(manifest: dict) -> list[str]:
    io = manifest.get("io") or {}
    lines = ["## I/O contract", "", f"Runtime: {manifest.get('runtime', manifest.get('target', ''))}. "
             f"Context: {manifest.get('max_seq_len')} tokens, vocabulary {manifest.get('vocab_size')}, "
             f"stop ids {manifest.get('eos_ids')}.", ""]
    inputs, outputs = io.get("inputs") or [], io.get("outputs") or []
    if inputs or outputs:
        lines += ["| | name | dtype | shape |", "|---|---|---|---|"]
        shown = [("input", t) for t in inputs[:6]] + [("output", t) for t in outputs[:3]]
        for role, tensor in shown:
            shape = "[" + ", ".join(str(d) for d in tensor.get("shape") or []) + "]"
            lines.append(f"| {role} | `{tensor.get('name')}` | {tensor.get('dtype', '')} | {shape} |")
        hidden = len(inputs) - 6 + max(len(outputs) - 3, 0)
        if hidden > 0:
            lines.append(f"| | … {hidden} more (the per-layer state) | | |")
    return lines + ["", "The full contract is `io` in `mobilekit.json`.", ""]


LOAD_SNIPPETS = {
    "executorch": ("Android (`org.pytorch:executorch-android`, ExecuTorch's LLM runner):", "kotlin", """\
val llm = LlmModule("$dir/{model}", "$dir/tokenizer.json", 0.8f)
llm.load()
llm.generate(prompt, 256, object : LlmCallback {{
    override fun onResult(result: String) = print(result)
    override fun onStats(stats: String) {{}}
}})""", "iOS (ExecuTorch's `ExecuTorchLLM` package):", "swift", """\
let runner = TextRunner(modelPath: dir.appendingPathComponent("{model}").path,
                        tokenizerPath: dir.appendingPathComponent("tokenizer.json").path)
try runner.load()
try runner.generate(prompt, Config {{ $0.sequenceLength = {max_seq_len} }}) {{ token in print(token, terminator: "") }}"""),
    "onnx": ("Android (ONNX Runtime GenAI's Java API; `genai_config.json` is in the folder):", "kotlin", """\
val genAI = SimpleGenAI(dir)
val params = genAI.createGeneratorParams().apply {{ setSearchOption("max_length", {max_seq_len}.0) }}
genAI.generate(params, prompt) {{ token -> print(token) }}""",
             "iOS (ONNX Runtime GenAI's Objective-C API, from Swift):", "swift", """\
let model = try OGAModel(configPath: dir.path)
let tokenizer = try OGATokenizer(model: model)
// OGAGeneratorParams / OGAGenerator: append the prompt's tokens, then generate one token per step"""),
    "coreml": ("Android: Core ML bundles are for Apple platforms only.", "", "",
               "iOS 18 / macOS 15 (Core ML, stateful KV cache; the shape swift-transformers loads):", "swift", """\
let model = try MLModel(contentsOf: try await MLModel.compileModel(at: dir.appendingPathComponent("{model}")))
let state = model.makeState()
// per call: inputIds [1, T] and causalMask [1, 1, T, past + T] in, logits out; `state` carries the cache
let out = try await model.prediction(from: inputs, using: state)"""),
}


def _load_section(manifest: dict) -> list[str]:
    snippet = LOAD_SNIPPETS.get(manifest.get("target", ""))
    lines = ["## Load it", ""]
    if snippet is None:
        return lines + [f"See the {manifest.get('target', '')} runtime's documentation.", ""]
    model = (manifest.get("model_files") or ["model"])[0]
    values = {"model": model, "max_seq_len": manifest.get("max_seq_len", 2048)}
    android_title, android_lang, android_code, ios_title, ios_lang, ios_code = snippet
    for title, lang, code in ((android_title, android_lang, android_code), (ios_title, ios_lang, ios_code)):
        lines += [title, ""]
        if code:
            lines += [f"```{lang}", code.format(**values), "```", ""]
    return lines + ["The Android and iOS demo apps of mobilekit load this folder as it is, reading "
                    "`mobilekit.json` for the prompt template, stop tokens and state layout.", ""]


def model_card(manifest: dict) -> str:
    """The README.md text for a bundle with this manifest."""
    name = manifest.get("model_name") or manifest.get("recipe") or "model"
    source = manifest.get("checkpoint") or {}
    size_mb = manifest.get("size_bytes", 0) / 1e6
    lines = [_front_matter(manifest), "", f"# {name} — {manifest.get('target', '')} {manifest.get('quant', '')}", "",
             f"A mobilekit bundle of {source.get('repo') or name} for phone apps: "
             f"{manifest.get('runtime', manifest.get('target', ''))}, {manifest.get('quant_description', manifest.get('quant', ''))}, "
             f"{size_mb:.1f} MB in all.", ""]
    if manifest.get("recipe"):
        lines += [f"Exported with `mobilekit export {manifest['recipe']} --target {manifest.get('target', '')} "
                  f"--quant {manifest.get('quant', '')}` (mobilekit {(manifest.get('versions') or {}).get('mobilekit', '?')}).",
                  ""]
    lines += _validation_section(manifest) + _io_section(manifest) + _load_section(manifest)
    lines += ["## Files", "", "| file | bytes | sha256 |", "|---|---|---|"]
    lines += [f"| `{path}` | {entry['bytes']} | `{entry['sha256'][:16]}…` |"
              for path, entry in sorted((manifest.get("files") or {}).items())]
    return "\n".join(lines) + "\n"
