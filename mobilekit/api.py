"""mobilekit's Python API, the engine the CLI runs: for notebooks, CI scripts and other tools.

    import mobilekit
    bundle = mobilekit.export("smollm2-135m", target="onnx", quant="int8", output="out/smol")
    bundle.manifest["validation"]["passed"]; bundle.generate("Hi").text; bundle.bench()["decode_tokens_per_s"]
    mobilekit.load_bundle("out/smol").validate()

Nothing here prints. Progress goes to an optional callback (one string per step), and every
problem with the input is a MobilekitError subclass (mobilekit.errors) carrying the exit code
the CLI would use: ValidationFailed (3) when an artefact misses its budget, UsageError (2) for
arguments that contradict each other, the others 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mobilekit import bench as bench_lib, bundle as bundle_io, chat as chat_format, matrix as matrix_lib
from mobilekit import pipeline, quantize, recipes as recipe_registry, targets as target_registry
from mobilekit.errors import MobilekitError, UsageError
from mobilekit.runtime import GenerationResult

Progress = Callable[[str], None]


def _quiet(_message: str) -> None:
    pass


@dataclass
class Bundle:
    """An exported bundle folder and its manifest (mobilekit.json)."""

    path: Path
    manifest: dict = field(repr=False)

    @property
    def target(self) -> str:
        return self.manifest["target"]

    @property
    def quant(self) -> str:
        return self.manifest["quant"]

    @property
    def files(self) -> dict[str, dict]:
        """Each file's sha256 and size, as the manifest lists them (manifest and card excluded)."""
        return self.manifest["files"]

    @property
    def passed(self) -> bool | None:
        """Whether validation passed at export; None when it was skipped."""
        validation = self.manifest.get("validation") or {}
        return validation.get("passed") if validation.get("performed") else None

    def validate(self, checkpoint: str | None = None, tokenizer: str | None = None,
                 trust_remote_code: bool = False, progress: Progress = _quiet) -> dict:
        """Re-run validation against the bundle's reference; returns the fresh record (its
        "passed" says the verdict). The bundle is only read."""
        return pipeline.revalidate(self.path, progress, checkpoint, tokenizer, trust_remote_code)

    def generate(self, prompt: str, max_new_tokens: int = 128, chat: bool = True,
                 template_vars: dict | None = None, on_text: Callable[[str], None] = _quiet,
                 on_note: Callable[[str], None] = _quiet) -> GenerationResult:
        """A greedy reply through the runtime apps use. `chat` wraps the prompt in the bundle's
        template; `on_text` receives the text as it streams. The token budget is cut to what
        the bundle's context leaves (`chat.fit_to_context`; `on_note` is told when it is)."""
        if max_new_tokens < 1:
            raise UsageError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
        bundle_io.verify_files(self.path, self.manifest, hashes=False)
        target = target_registry.of_bundle(self.path, self.manifest)
        target.check_available()
        text = chat_format.format_prompt(self.manifest, prompt, template_vars or {}) if chat else prompt
        max_new_tokens, note = chat_format.fit_to_context(
            self.manifest, chat_format.prompt_token_count(self.path, self.manifest, text), max_new_tokens)
        if note:
            on_note(note)
        return target.generate(self.path, self.manifest, text, max_new_tokens, on_text)

    def bench(self, new_tokens: int = 128, quality: bool = False, on_note: Callable[[str], None] = _quiet) -> dict:
        """Prefill/decode tokens per second, time to first token, peak RSS and size (and, with
        `quality`, the quality against the reference), as one row of `mobilekit bench --json`."""
        return bench_lib.run([self.path], compare_eager=False, new_tokens=new_tokens, on_note=on_note,
                             quality=quality)[0]


def load_bundle(path: str | Path) -> Bundle:
    """A bundle folder, its manifest checked against the schema (BundleError if damaged)."""
    path = Path(path)
    return Bundle(path, bundle_io.read_manifest(path))


def list_recipes() -> list[recipe_registry.Recipe]:
    """Every recipe (`mobilekit list`). Not `mobilekit.recipes()`: that name is the recipe
    registry's module, which Python binds on the package once anything imports it."""
    return recipe_registry.all_recipes()


def goal_of(quant: str | None, max_size: str | int | None, max_ppl_increase: float | None,
            recipe: recipe_registry.Recipe | None, target_names: list[str]) -> quantize.Goal | None:
    """--quant auto's goal, or None; UsageError where the arguments contradict each other."""
    if max_size is None and max_ppl_increase is None:
        if quant in quantize.GOAL_SCHEMES and not all(recipe and recipe.goal_for(name) for name in target_names):
            raise UsageError("--quant auto needs a goal: --max-size SIZE (e.g. 110MB) or --max-ppl-increase "
                             "PERCENT (e.g. 5); the recipe gives none for this target")
        return None
    if quant not in quantize.GOAL_SCHEMES:
        raise UsageError("--max-size and --max-ppl-increase choose --quant auto's precision; add --quant auto")
    if max_ppl_increase is not None and not (0 < max_ppl_increase < 1000):
        raise UsageError(f"--max-ppl-increase {max_ppl_increase:g} must be a percentage above 0, e.g. 5")
    size = quantize.parse_size(max_size) if isinstance(max_size, str) else max_size
    return quantize.Goal(size, max_ppl_increase)


def export_each(source: str | None, target_names: list[str], *, checkpoint: str | None = None,
                quant: str | None = None, output: str | Path | None = None, max_seq_len: int | None = None,
                tokenizer: str | None = None, max_size: str | int | None = None,
                max_ppl_increase: float | None = None, validate: bool = True, keep_failed: bool = False,
                progress: Progress = _quiet) -> tuple[list[Bundle], list[tuple[str, MobilekitError]]]:
    """Export to several targets sharing one reference run. `output` is the bundle folder for
    one target, the parent folder for several. Returns the bundles written and, per target
    that failed, its error (a single target's error is raised instead)."""
    recipe = recipe_registry.get(source) if source else None
    if recipe is None and checkpoint is None:
        raise UsageError("give a recipe id, or a checkpoint (folder, .gguf or owner/name[@revision]) without one")
    if quant is not None:  # fail before any work if a target does not offer the scheme
        for name in target_names:
            target_registry.get(name).check_scheme(quant)
    goal = goal_of(quant, max_size, max_ppl_increase, recipe, target_names)
    context = pipeline.make_context(recipe, checkpoint, max_seq_len, tokenizer=tokenizer)
    written, failures = [], []
    for name in target_names:
        out = Path(output) / name if (output and len(target_names) > 1) else (Path(output) if output else None)
        options = pipeline.ExportOptions(target=name, scheme=quant, max_seq_len=max_seq_len, checkpoint=checkpoint,
                                         output=out, validate=validate, keep_failed=keep_failed, goal=goal)
        try:
            result = pipeline.export(context, options, progress)
            written.append(load_bundle(result.path))  # the manifest as written (JSON), as load_bundle gives it
        except MobilekitError as e:
            if len(target_names) == 1:
                raise
            failures.append((name, e))
    return written, failures


def export(source: str, target: str = "executorch", quant: str | None = None, output: str | Path | None = None, *,
           max_seq_len: int | None = None, tokenizer: str | None = None, max_size: str | int | None = None,
           max_ppl_increase: float | None = None, validate: bool = True, keep_failed: bool = False,
           progress: Progress = _quiet) -> Bundle:
    """Export `source` to a validated bundle for `target` and return it.

    `source` is a recipe id (`list_recipes()`), or a checkpoint: a local Hugging Face folder, a
    `.gguf` file, `owner/name[@revision]`, or "embedded". `quant` defaults to the recipe's
    choice for the target; "auto" takes `max_size` ("110MB" or bytes) or `max_ppl_increase`
    (percent). Raises ValidationFailed when the artefact misses its budget (unless
    `keep_failed`), and other MobilekitError subclasses for bad input."""
    is_recipe = source in {r.id for r in recipe_registry.all_recipes()}
    written, _ = export_each(source if is_recipe else None, [target], checkpoint=None if is_recipe else source,
                             quant=quant, output=output, max_seq_len=max_seq_len, tokenizer=tokenizer,
                             max_size=max_size, max_ppl_increase=max_ppl_increase, validate=validate,
                             keep_failed=keep_failed, progress=progress)
    return written[0]


def run_matrix(recipes: str = "*", targets: list[str] | None = None, quants: list[str] | None = None,
           mode: str = "tiny", output: str | Path = "out/matrix", jobs: int = 1, cell_timeout: float = 3600,
           keep_bundles: bool = False, on_event: matrix_lib.Event = lambda *_: None) -> dict:
    """Export and validate every recipe × target × quant cell (`mobilekit matrix`; not named
    `matrix`, which is the matrix module's name on the package), each in
    its own process; writes report.json and report.html under `output` and returns the report
    (its "summary" counts the cells by status)."""
    import time

    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise matrix_lib.MatrixError(f"{output} already exists and is not empty; remove it or pass another --output")
    cells = matrix_lib.select_cells(recipes, targets, quants)
    started = time.perf_counter()
    records = matrix_lib.run(cells, mode, output, jobs=jobs, cell_timeout=cell_timeout, keep_bundles=keep_bundles,
                             on_event=on_event)
    selection = {"recipes": recipes, "targets": targets or target_registry.names(), "quant": quants or quantize.fixed_names(),
                 "shards": ["1/1"]}
    report = matrix_lib.build_report(records, mode, selection, time.perf_counter() - started)
    matrix_lib.write_report(report, output)
    return report


__all__ = ["Bundle", "export", "export_each", "list_recipes", "load_bundle", "run_matrix"]
