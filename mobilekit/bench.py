"""Speed, size and memory of bundles, side by side in one run.

Each measurement runs in its own child process, so peak RSS is that runtime's alone
(not the parent's imports or another bundle's buffers)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from mobilekit import bundle, chat, pipeline, recipes, targets, validate
from mobilekit.checkpoint import resolve
from mobilekit.runtime import threads

BENCH_PROMPT = "Write a long story about a dragon who learns to bake bread."


def run(bundle_dirs: list[Path], compare_eager: bool, new_tokens: int,
        on_note: Callable[[str], None] = lambda _m: None, quality: bool = False) -> list[dict]:
    """Every bundle is checked (manifest, files, runtime installed, prompt within its
    context) before any is measured; `new_tokens` beyond a bundle's context is clamped,
    with a note. Bundles are only read."""
    planned = []
    for folder in bundle_dirs:
        manifest = bundle.read_manifest(folder)
        bundle.verify_files(folder, manifest, hashes=False)
        targets.of_bundle(folder, manifest).check_available()
        prompt_tokens = chat.prompt_token_count(folder, manifest, chat.format_prompt(manifest, BENCH_PROMPT))
        tokens, note = chat.fit_to_context(manifest, prompt_tokens, new_tokens)
        if note:
            on_note(f"{folder.name}: {note}")
        planned.append((folder, manifest, tokens))
    rows = []
    eager_source = None
    for folder, manifest, tokens in planned:
        row = _child(["bundle", str(folder), str(tokens)])
        row.update(name=folder.name, target=manifest["target"], quant=manifest["quant"],
                   size_mb=manifest["size_bytes"] / 1e6)
        if quality:
            row["quality"] = _quality(folder, manifest, on_note)
        rows.append(row)
        eager_source = eager_source or (folder, manifest)
    if compare_eager and eager_source:
        folder, manifest = eager_source
        row = _child(["eager", pipeline._source_of(manifest), str(folder), str(new_tokens)])
        row.update(name="transformers eager fp32", target="eager", quant="fp32", size_mb=None)
        rows.append(row)
        for r in rows:
            r["decode_vs_eager"] = r["decode_tokens_per_s"] / row["decode_tokens_per_s"]
    return rows


_references: dict = {}


def _quality(folder: Path, manifest: dict, on_note: Callable[[str], None]) -> dict:
    """Validation's stage-2 measurements of one bundle (teacher-forced perplexity and top-1
    on the evaluation text, greedy matches, long continuations' degeneration) against its
    checkpoint's reference, computed once per checkpoint and context length in this run."""
    source = pipeline._source_of(manifest)
    key = (source, manifest["max_seq_len"])
    if key not in _references:
        recipe = recipes.get(manifest["recipe"]) if manifest.get("recipe") else None
        on_note(f"computing the reference of {source} for --quality")
        context = pipeline.make_context(recipe, source, manifest["max_seq_len"])
        _references[key] = context.reference(lambda _m: None)
    metrics = validate.measure(targets.of_bundle(folder, manifest).open_session(folder, manifest), _references[key])
    continuations = metrics.continuations
    return {
        "ppl_increase_pct": metrics.ppl_increase_pct, "top1_agreement": metrics.top1_agreement,
        "greedy_match": metrics.greedy_match, "degenerate_continuations": metrics.degenerate_continuations,
        "continuations": {name: c.get("artefact") for name, c in continuations.items()},
        "degenerate_answers": metrics.degenerate_answers,
        "answers": {name: g["answer"] for name, g in metrics.greedy_tokens.items() if "answer" in g},
    }


def _child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-m", "mobilekit.bench", *args], capture_output=True, text=True)
    if proc.returncode != 0:  # the bundle was checked before: a failure here is mobilekit's
        raise RuntimeError(f"benchmark worker failed ({' '.join(args[:2])}), exit {proc.returncode}:\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"mobilekit bench (prompt: {BENCH_PROMPT!r})")
    with_quality = any("quality" in r for r in rows)
    for col in ("bundle", "runtime", "prompt tok", "new tok", "TTFT ms", "prefill tok/s",
                "decode tok/s", "× eager", "peak RSS MB", "size MB",
                *(("ppl Δ", "top-1", "degenerate", "bad answers") if with_quality else ())):
        table.add_column(col)
    for r in rows:
        q = r.get("quality")
        quality_cells = (f"{q['ppl_increase_pct']:+.1f}%", f"{q['top1_agreement']:.1%}",
                         f"{q['degenerate_continuations']}/{len(q['continuations'])}",
                         f"{q['degenerate_answers']}/{len(q['answers'])}") if q else ("", "", "", "")
        table.add_row(
            r["name"], r["runtime"], str(r["prompt_tokens"]), str(r["generated_tokens"]),
            f"{r['time_to_first_token_s'] * 1000:.0f}", f"{r['prefill_tokens_per_s']:.0f}",
            f"{r['decode_tokens_per_s']:.1f}", f"{r['decode_vs_eager']:.1f}" if "decode_vs_eager" in r else "",
            f"{r['peak_rss_mb']:.0f}", f"{r['size_mb']:.1f}" if r["size_mb"] else "",
            *(quality_cells if with_quality else ()),
        )
    Console().print(table)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _bench_bundle(folder: Path, new_tokens: int) -> dict:
    manifest = bundle.read_manifest(folder)
    target = targets.get(manifest["target"])
    target.check_available()
    prompt = chat.format_prompt(manifest, BENCH_PROMPT)
    pieces = []
    result = target.generate(folder, manifest, prompt, new_tokens, pieces.append)
    return {
        "runtime": result.runtime,
        "prompt_tokens": result.prompt_tokens,
        "generated_tokens": len(result.token_ids) or len(pieces),
        "time_to_first_token_s": result.time_to_first_token_s,
        "prefill_tokens_per_s": result.prefill_tokens_per_s,
        "decode_tokens_per_s": result.decode_tokens_per_s,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _bench_eager(source: str, folder: Path, new_tokens: int) -> dict:
    """transformers generate, fp32, greedy, forced to `new_tokens` tokens."""
    import torch

    torch.set_num_threads(threads())  # the same thread count the bundles' runtimes get
    manifest = bundle.read_manifest(folder)
    checkpoint = resolve(source)
    model = checkpoint.load_reference()
    tokenizer = checkpoint.load_tokenizer()
    prompt = chat.format_prompt(manifest, BENCH_PROMPT)
    ids = tokenizer(prompt, add_special_tokens=manifest.get("add_bos", False), return_tensors="pt")["input_ids"]

    def timed(n: int) -> float:
        start = time.perf_counter()
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                       do_sample=False, pad_token_id=tokenizer.eos_token_id)
        return time.perf_counter() - start

    timed(2)  # warm-up
    first = timed(1)
    total = timed(new_tokens)
    return {
        "runtime": "transformers eager (generate)",
        "prompt_tokens": ids.shape[1],
        "generated_tokens": new_tokens,
        "time_to_first_token_s": first,
        "prefill_tokens_per_s": ids.shape[1] / first,
        "decode_tokens_per_s": (new_tokens - 1) / (total - first),
        "peak_rss_mb": _peak_rss_mb(),
    }


if __name__ == "__main__":
    kind, *rest = sys.argv[1:]
    if kind == "bundle":
        out = _bench_bundle(Path(rest[0]), int(rest[1]))
    else:
        out = _bench_eager(rest[0], Path(rest[1]), int(rest[2]))
    print(json.dumps(out))
