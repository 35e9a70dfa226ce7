"""The one straight pipeline, the same for every model and target:

resolve checkpoint -> family adapter -> mobilekit decoder  --stage 1 vs HF reference-->
  -> target export (cache, attention, quantize, lower) into a staging folder
  -> tokenizer + manifest  --stage 2 vs HF reference, through the target's runtime-->
  -> rename into place (only when complete, and only when validation passed or was waived)
"""

from __future__ import annotations

import dataclasses
import gc
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from mobilekit import __version__, bundle, precision, quantize, recipes, targets, validate
from mobilekit.checkpoint import Checkpoint, resolve
from mobilekit.errors import BundleError, ExportError, ValidationFailed
from mobilekit.memory import total_memory
from mobilekit.recipes import Recipe
from mobilekit.runtime.eager import DecoderReference, EagerSession

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ExportOptions:
    target: str
    scheme: str | None = None  # None = the recipe's default for the target
    max_seq_len: int | None = None  # None = the recipe's
    checkpoint: str | None = None  # None = the recipe's
    output: Path | None = None  # None = out/<recipe>-<target>-<scheme>
    validate: bool = True
    keep_failed: bool = False  # write the bundle even if validation misses a budget
    goal: "precision.Goal | None" = None  # --quant auto's --max-size / --max-ppl-increase


@dataclass
class ExportResult:
    path: Path
    manifest: dict


@dataclass(frozen=True)
class ReferenceSource:
    """Where the parity reference comes from. `load(dtype)` returns a model with the slice of
    the transformers API validate.compute_reference uses; `name` goes into the manifest.
    `independent` is False when the reference is the mobilekit decoder itself: stage 1 is
    then recorded as skipped, with `name` saying why, rather than as a trivial pass."""

    name: str
    load: Callable[[torch.dtype], object]
    independent: bool = True


class Context:
    """What one export needs from its checkpoint, loaded once and shared by all targets.

    The reference is transformers' eager model, or for a family transformers lacks (OpenELM,
    MiniCPM, open_lm): the checkpoint's own modeling code when `trust_remote_code` is asked
    for, else the mobilekit decoder (stage 2 only). Tests pass `reference` to use the
    independent references in tests/reference instead."""

    def __init__(self, recipe: Recipe | None, checkpoint: Checkpoint, max_seq_len: int,
                 budget_overrides: dict | None = None, reference: ReferenceSource | None = None,
                 trust_remote_code: bool = False):
        self.recipe, self.checkpoint, self.max_seq_len = recipe, checkpoint, max_seq_len
        self.trust_remote_code = trust_remote_code
        self._reference_source = reference
        # scheme -> {metric: bound}; the recipe's [budgets] unless the caller gives its own
        self.budget_overrides = budget_overrides if budget_overrides is not None else (
            {k: dict(v) for k, v in recipe.budgets.items()} if recipe else {})
        self.tokenizer = checkpoint.load_tokenizer()
        if recipe and recipe.chat_template and not getattr(self.tokenizer, "chat_template", None):
            # a prompt format the checkpoint does not ship (LaMini-GPT's Alpaca wrapper)
            self.tokenizer.chat_template = recipe.chat_template
        self._reference = None
        self._stage1 = None

    @property
    def reference_dtype(self) -> torch.dtype:
        """fp32 unless an fp32 copy of the model would not fit in memory (7B and up on a
        24 GB machine): then the checkpoint's own bf16/fp16, with a matching stage-1 budget."""
        if fits_in_memory(self.checkpoint.spec.num_parameters * 4):
            return torch.float32
        stored = self.checkpoint.stored_dtype
        if stored == torch.float32 or not fits_in_memory(self.checkpoint.spec.num_parameters * 2, 0.75):
            raise ExportError(
                f"validating {self.checkpoint.path.name} needs its reference model in memory "
                f"({self.checkpoint.spec.num_parameters * 2 / 1e9:.1f} GB at 16 bits) and this machine has "
                f"{total_memory() / 1e9:.1f} GB: export with --no-validate here and validate the bundle on a "
                "larger machine with `mobilekit validate`"
            )
        return stored

    @property
    def reference_source(self) -> ReferenceSource:
        if self._reference_source is not None:
            return self._reference_source
        checkpoint = self.checkpoint
        dtype = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.reference_dtype]
        if checkpoint.family.hf_reference_class is not None:
            return ReferenceSource(f"transformers eager {dtype}", checkpoint.load_reference)
        if self.trust_remote_code:
            return ReferenceSource(f"the checkpoint's own modeling code (trust_remote_code) {dtype}",
                                   lambda d: checkpoint.load_reference(d, trust_remote_code=True))
        return ReferenceSource(
            f"mobilekit decoder eager {dtype} (transformers has no implementation of {checkpoint.family.name}: "
            "stage 1 is skipped; the port is checked against independent references on tiny configs in "
            "tests/reference, and `mobilekit validate --trust-remote-code` compares with the checkpoint's own code)",
            lambda d: DecoderReference(checkpoint.build_decoder(d), checkpoint.config, self.max_seq_len),
            independent=False,
        )

    @property
    def reference_name(self) -> str:
        return self.reference_source.name

    def reference(self, progress: Progress) -> validate.Reference:
        if self._reference is None:
            progress(f"running the reference ({self.reference_name})")
            model = self.reference_source.load(self.reference_dtype)
            self._reference = validate.compute_reference(model, self.tokenizer, self.max_seq_len, recipe=self.recipe)
            del model
            gc.collect()  # a 7B reference must be gone before the decoder loads
        return self._reference

    def stage1(self, progress: Progress) -> dict:
        """The mobilekit decoder (eager, at the reference's dtype) vs the reference: the same
        for every target."""
        if self._stage1 is None and not self.reference_source.independent:
            self._stage1 = {"skipped": self.reference_name, "passed": True, "misses": []}
        if self._stage1 is None:
            reference = self.reference(progress)
            progress("stage 1: mobilekit decoder vs reference")
            dtype = self.reference_dtype
            session = EagerSession(self.checkpoint.build_decoder(dtype), self.max_seq_len)
            metrics = validate.measure(session, reference, continuations=False)
            budget = quantize.FP32_BUDGET if dtype == torch.float32 else quantize.BF16_REFERENCE_BUDGET
            self._stage1 = validate.stage_record(metrics, budget, session.runtime)
            del session
            gc.collect()
        return self._stage1

    def budget(self, scheme: str, target=None) -> quantize.Budget:
        """The scheme's budget, with the target's adjustments for what its format cannot
        represent (Core ML's fp16-only states under fp32), then the recipe's overrides."""
        adjusted = dict(getattr(target, "budget_adjustments", {}).get(scheme, {}))
        return quantize.budget_for(scheme, {**adjusted, **(self.budget_overrides.get(scheme) or {})})


def peak_rss_mb() -> int:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def memory_note() -> str:
    """Resident memory now and at peak, for progress lines: where a large export spends it."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:  # not Linux: the peak alone
        return f"peak {peak_rss_mb() / 1e3:.1f} GB"
    return f"rss {resident_pages * os.sysconf('SC_PAGE_SIZE') / 1e9:.1f} GB, peak {peak_rss_mb() * 1.048576 / 1e3:.1f} GB"


def fits_in_memory(nbytes: int, share: float = 0.45) -> bool:
    """Whether `nbytes` is at most `share` of physical memory. The default leaves room for
    a second working set of similar size (a converter's copies); a model that is only
    loaded, run and freed (the reference) may take 75%."""
    return nbytes <= share * total_memory()


def make_context(recipe: Recipe | None, checkpoint_source: str | None, max_seq_len: int | None,
                 budget_overrides: dict | None = None, tokenizer: str | None = None,
                 trust_remote_code: bool = False, reference: ReferenceSource | None = None) -> Context:
    """`tokenizer`: a folder or hub id overriding the checkpoint's and the recipe's tokenizer.
    `trust_remote_code`: for families transformers lacks, the reference is the checkpoint
    folder's own modeling code (only when the user asks)."""
    if recipe is None and checkpoint_source is None:
        raise ExportError("give a recipe, or --checkpoint PATH for a checkpoint without a recipe")
    checkpoint = resolve(checkpoint_source or recipe.checkpoint_source, with_code=trust_remote_code)
    if recipe is not None:
        recipes.check_checkpoint(recipe, checkpoint)  # the recipe's stored config is what info showed
    checkpoint.choose_tokenizer(tokenizer, recipe.tokenizer if recipe else None)
    spec = checkpoint.spec
    checkpoint.check_weights()  # every mismatch at once, before any model is built
    if recipe is not None and checkpoint.family.name != recipe.family:
        raise ExportError(
            f"recipe {recipe.id} is for family {recipe.family}, but {checkpoint.path} is a "
            f"{checkpoint.family.name} checkpoint ({checkpoint.config.get('architectures')})"
        )
    default_len = recipe.max_seq_len if recipe else min(spec.max_exportable_context, 2048)
    length = max_seq_len or default_len
    if length > spec.max_exportable_context:
        raise ExportError(
            f"--max-seq-len {length} exceeds the model's context of {spec.max_exportable_context} tokens; "
            f"pass --max-seq-len {spec.max_exportable_context} or less"
        )
    if length < 32:
        raise ExportError(f"--max-seq-len {length} is too short; use at least 32")
    return Context(recipe, checkpoint, length, budget_overrides, reference, trust_remote_code)


def export(context: Context, options: ExportOptions, progress: Progress = lambda _m: None) -> ExportResult:
    target = targets.get(options.target)
    recipe = context.recipe
    scheme = options.scheme or (recipe.default_quant.get(target.name) if recipe else None) or target.default_scheme
    quantize.get(scheme)
    target.check_scheme(scheme)
    target.check_available()
    if scheme in quantize.GOAL_SCHEMES and options.goal is None and recipe is not None:
        options = dataclasses.replace(options, goal=recipe.goal_for(target.name))
    if (scheme in quantize.GOAL_SCHEMES) != (options.goal is not None):
        raise ExportError("--quant auto needs a goal: --max-size SIZE (e.g. 110MB) or --max-ppl-increase PERCENT"
                          if options.goal is None else
                          f"--max-size / --max-ppl-increase only apply to --quant auto, not {scheme}")
    name = bundle.default_name(recipe.id if recipe else context.checkpoint.path.name, target.name, scheme)
    destination = Path(options.output) if options.output else Path("out") / name

    quantize_while_loading = target.layer_quantizer(scheme)
    fp32_bytes = context.checkpoint.spec.num_parameters * 4
    # --quant auto also holds each planned weight at 4 and at 8 bits, dequantized (precision.py)
    factor = target.export_memory_factor + (2 if options.goal is not None else 0)
    if quantize_while_loading is None and not fits_in_memory(fp32_bytes * factor, 0.9):
        raise ExportError(
            f"the {target.name} target{' with --quant auto' if options.goal else ''} converts the whole fp32 model "
            f"at once: about {fp32_bytes * factor / 1e9:.0f} GB at peak for this model, too much for this "
            f"machine's {total_memory() / 1e9:.1f} GB. Use --target executorch with --quant int4 or int8 "
            "(quantized layer by layer as the weights load), or a machine with more memory."
        )
    tokenizer = context.tokenizer
    bundle_bytes = context.checkpoint.spec.num_parameters * quantize.get(scheme).bits_per_weight / 8
    expected_bytes = int(bundle_bytes * 1.05) + (16 << 20)  # and the tokenizer
    with bundle.staging(destination, expected_bytes) as staging_dir:
        stage1 = context.stage1(progress) if options.validate else None
        started = time.perf_counter()
        progress("loading weights" + (f" and quantizing each layer ({scheme})" if quantize_while_loading else ""))
        decoder = context.checkpoint.build_decoder(prepare=quantize_while_loading)
        plan = None
        if options.goal is not None:
            plan = precision.choose(decoder, tokenizer, target.weight_format(), options.goal, progress)
        request = targets.ExportRequest(
            decoder=decoder,
            scheme=scheme,
            max_seq_len=context.max_seq_len,
            bos_id=tokenizer.bos_token_id,
            eos_ids=sorted(validate.stop_ids(tokenizer, context.checkpoint.config, context.recipe)),
            out_dir=staging_dir,
            progress=progress,
            plan=plan.bits() if plan else None,
        )
        del decoder
        artefact = target.export(request)
        del request
        for path in context.checkpoint.tokenizer_files():
            shutil.copy2(path, staging_dir / path.name)
        if not (staging_dir / "tokenizer.json").exists():
            # vocab.json + merges.txt (Cerebras-GPT) or tokenizer.model only: every app runtime
            # reads tokenizer.json, which the fast tokenizer writes from either.
            tokenizer.backend_tokenizer.save(str(staging_dir / "tokenizer.json"))
        export_seconds = time.perf_counter() - started
        manifest = _manifest(context, target, scheme, artefact, export_seconds)
        if plan is not None:
            manifest["quantization"] = plan.as_manifest()

        validation = {"performed": False, "passed": None}
        if options.validate:
            progress(f"stage 2: {target.name} artefact vs reference")
            session = target.open_session(staging_dir, manifest)
            stage2 = _stage2(target, staging_dir, session, context, scheme)
            validation = _validation_record(stage1, stage2, context.reference_name)
        manifest["validation"] = validation
        manifest = bundle.write_manifest(staging_dir, manifest)
        if validation["performed"] and not validation["passed"] and not options.keep_failed:
            raise ValidationFailed(_failure_message(validation), report=validation)
    return ExportResult(destination, manifest)


def _stage2(target, bundle_dir: Path, session, context: Context, scheme: str) -> dict:
    """The artefact through the validation Session, then (where the app runtime is a
    different one, as ONNX Runtime GenAI is) greedy continuations through the app runtime."""
    reference, budget = context.reference(lambda _m: None), context.budget(scheme, target)
    record = validate.stage_record(validate.measure(session, reference), budget, session.runtime)
    app = validate.app_runtime_check(target, bundle_dir, reference, budget)
    if app is not None:
        record["app_runtime"] = app
        record["misses"] += app["misses"]
        record["passed"] = record["passed"] and app["passed"]
    return record


def _validation_record(stage1: dict, stage2: dict, reference_name: str) -> dict:
    return {
        "performed": True,
        "passed": stage1["passed"] and stage2["passed"],
        "reference": reference_name,
        "prompts": validate.fixed_prompts(),
        "eval_tokens": validate.EVAL_TOKENS,
        "stage1": stage1,
        "stage2": stage2,
    }


def _failure_message(validation: dict) -> str:
    lines = ["validation failed:"]
    for stage in ("stage1", "stage2"):
        for miss in validation[stage]["misses"]:
            lines.append(f"  {stage}: {miss}")
    lines.append("Re-export with another --quant, or pass --keep-failed to keep the bundle anyway.")
    return "\n".join(lines)


def _manifest(context: Context, target, scheme: str, artefact, export_seconds: float) -> dict:
    tokenizer, checkpoint, recipe = context.tokenizer, context.checkpoint, context.recipe
    stops = validate.stop_ids(tokenizer, checkpoint.config, recipe)
    spec = dataclasses.asdict(checkpoint.spec)
    spec.pop("extra", None)
    return {
        "recipe": recipe.id if recipe else None,
        "model_name": recipe.name if recipe else checkpoint.path.name,
        "license": recipe.license if recipe else None,
        "family": checkpoint.family.name,
        "architecture": (checkpoint.config.get("architectures") or [None])[0],
        "checkpoint": checkpoint.source,
        "tokenizer_source": checkpoint.tokenizer_source,
        "target": target.name,
        "quant": scheme,
        "quant_description": quantize.get(scheme).description,
        "runtime": target.runtime,
        "versions": {"mobilekit": _version(), "python": platform.python_version(), **target.runtime_versions()},
        "max_seq_len": context.max_seq_len,
        "vocab_size": checkpoint.spec.vocab_size,
        "bos_id": tokenizer.bos_token_id,
        "eos_ids": sorted(stops),
        "add_bos": bool(tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]) if tokenizer.bos_token_id is not None else False,
        "chat_template": getattr(tokenizer, "chat_template", None),
        # the strings a chat template names as bos_token / eos_token (apps render it themselves)
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
        "stop_strings": sorted({tokenizer.decode([i]) for i in stops} | set(recipe.stop_strings if recipe else ())),
        "decoder_spec": spec,
        "io": artefact.io,
        "model_files": artefact.files,
        "export": {"seconds": round(export_seconds, 2), "peak_rss_mb": peak_rss_mb(), **artefact.extra},
    }


def _version() -> str:
    return __version__


def revalidate(bundle_dir: Path, progress: Progress = lambda _m: None, checkpoint_source: str | None = None,
               tokenizer: str | None = None, trust_remote_code: bool = False) -> dict:
    """Re-run validation of an existing bundle against its checkpoint's reference. The bundle
    is only read: the fresh record is returned (the CLI can write it with --report)."""
    manifest = bundle.read_manifest(bundle_dir)
    bundle.verify_files(bundle_dir, manifest)
    target = targets.of_bundle(bundle_dir, manifest)
    target.check_available()
    recipe = recipes.get(manifest["recipe"]) if manifest.get("recipe") else None
    source = checkpoint_source or _source_of(manifest)
    if tokenizer is None and (manifest.get("tokenizer_source") or {}).get("kind") == "option":
        tokenizer = manifest["tokenizer_source"]["option"]  # what --tokenizer was at export
    context = make_context(recipe, source, manifest["max_seq_len"], tokenizer=tokenizer,
                           trust_remote_code=trust_remote_code)
    stage1 = context.stage1(progress)
    progress(f"stage 2: {manifest['target']} artefact vs reference")
    session = target.open_session(Path(bundle_dir), manifest)
    stage2 = _stage2(target, Path(bundle_dir), session, context, manifest["quant"])
    return _validation_record(stage1, stage2, context.reference_name)


def _source_of(manifest: dict) -> str:
    source = manifest["checkpoint"]
    if source["kind"] == "embedded":
        return "embedded"
    if source["kind"] == "hub":
        return f"{source['repo']}@{source['revision']}"
    if source["kind"] in ("local", "gguf") and Path(source["path"]).exists():
        return source["path"]
    raise BundleError(
        f"the bundle's checkpoint {source.get('path', source.get('file'))} is not on this machine; "
        "pass it with --checkpoint PATH"
    )
