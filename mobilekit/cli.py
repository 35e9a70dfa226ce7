"""mobilekit's command line. The only module that prints to the user or exits."""

from __future__ import annotations

import errno
import importlib
import json
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager, nullcontext
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import click

from mobilekit import bundle, chat as chat_format, interrupt, quantize, targets, terminal
from mobilekit.errors import (EXIT_BUG, EXIT_INPUT, EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_VALIDATION,
                              CheckpointError, MobilekitError, ResourceError, ValidationFailed)
from mobilekit.files import cache_dir
from mobilekit.matrix_verdict import DEFAULT_TOLERANCES, failure_reason

TARGET_CHOICES = [*targets.names(), "all"]

# The modules the commands work through, imported when a command runs: the one lazy import
# path in mobilekit (everything else imports at the top), so that `mobilekit --help` loads
# neither torch nor the recipes and families, and `list` and `info` none of the export
# machinery. A command names the modules it needs by these keys.
COMMAND_MODULES = {
    "recipes": "mobilekit.recipes",  # list, info, export
    "families": "mobilekit.families",  # list, info
    "checkpoint_config": "mobilekit.checkpoint_config",  # info: sizes from a recipe's stored config.json
    "checkpoint": "mobilekit.checkpoint",  # info, for a recipe that stores no config.json (torch)
    "pipeline": "mobilekit.pipeline",  # export, validate (torch)
    "bench": "mobilekit.bench",
    "goldens": "mobilekit.goldens",
    "matrix": "mobilekit.matrix",
    "hub": "mobilekit.hub",  # push
    "api": "mobilekit.api",  # export (the Python API the CLI runs)
    "doctor": "mobilekit.doctor",
}


def _module(key: str):
    """A module of COMMAND_MODULES, imported on first use."""
    return importlib.import_module(COMMAND_MODULES[key])


# Where mobilekit's own messages go while library output is routed to a log file
# (mobilekit.terminal): the original stderr; None means sys.stderr.
_terminal = None


def _console():
    from rich.console import Console

    if _terminal is not None:
        return Console(file=_terminal, log_path=False)
    return Console(stderr=True, log_path=False)


@contextmanager
def _progress(description: str):
    """A spinner whose text follows the pipeline's progress messages, each also logged with
    the time and resident memory; without a terminal (CI, a log file) just the log lines,
    written as they happen."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    memory_note = _module("pipeline").memory_note
    console = _console()
    if not console.is_terminal:
        yield lambda message: console.log(f"{description}: {message}  ({memory_note()})")
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task(description)

        def update(message: str) -> None:
            progress.update(task, description=f"{description}: {message}")
            progress.console.log(f"{message}  ({memory_note()})")

        yield update


class MobilekitGroup(click.Group):
    """The one error boundary (README "Errors and exit codes"). A MobilekitError is the
    user's input or environment at fault: its message, and its class's exit code (1, or 3 for
    a failed validation; click exits 2 on usage errors). A full disk, missing memory or a
    missing package are the environment too (exit 1). Ctrl-C exits 130 and SIGTERM 143, after
    the clean-up that removes any half-written bundle. Anything else is a bug in mobilekit:
    one line that says so, the traceback in a log file, exit 70. --debug (or
    MOBILEKIT_DEBUG=1) prints the traceback as well. An interruption a library swallowed is
    raised again (mobilekit.interrupt)."""

    def invoke(self, ctx):
        global _terminal
        debug = ctx.params.get("debug") or _env_flag("MOBILEKIT_DEBUG")
        verbose = debug or ctx.params.get("verbose") or _env_flag("MOBILEKIT_VERBOSE")
        with nullcontext((None, None)) if verbose else terminal.library_output_to_log("mobilekit") as (stream, _log):
            _terminal = stream
            try:
                return self._invoke(ctx, debug)
            finally:
                _terminal = None

    def _invoke(self, ctx, debug: bool):
        try:
            with interrupt.handlers():
                result = super().invoke(ctx)
                interrupt.check()  # asked for, but swallowed somewhere: still an interruption
                return result
        except (click.exceptions.Exit, click.exceptions.ClickException, click.exceptions.Abort):
            raise  # click's own: usage errors (exit 2), --help, --version
        except KeyboardInterrupt as e:
            _show_traceback(debug)
            _exit_interrupted(isinstance(e, interrupt.Terminated))
        except MobilekitError as e:
            _show_traceback(debug)
            if interrupt.requested():  # a swallowed Ctrl-C that surfaced as another error
                _exit_interrupted(interrupt.requested() == signal.SIGTERM)
            click.secho(f"Error: {e}", fg="red", err=True, file=_terminal)
            sys.exit(e.exit_code)
        except Exception as e:
            _show_traceback(debug)
            if interrupt.requested():
                _exit_interrupted(interrupt.requested() == signal.SIGTERM)
            message = _environment_problem(e)
            if message is not None:
                click.secho(f"Error: {message}", fg="red", err=True, file=_terminal)
                sys.exit(EXIT_INPUT)
            log = _write_crash_log(e)
            click.secho(f"Internal error: mobilekit hit a bug ({type(e).__name__}: {_first_line(e)}). This is not a "
                        f"problem with your input. The traceback is in {log}; please report it with that file "
                        "(--debug prints it).", fg="red", err=True, file=_terminal)
            sys.exit(EXIT_BUG)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def _exit_interrupted(terminated: bool):
    click.secho(f"{'Terminated' if terminated else 'Interrupted'}: stopped before finishing; no bundle was written.",
                fg="yellow", err=True, file=_terminal)
    sys.exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)


def _show_traceback(debug: bool) -> None:
    if debug:
        traceback.print_exc()


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]


def _environment_problem(error: Exception) -> str | None:
    """The message for an error of the machine rather than of mobilekit, or None."""
    if isinstance(error, MemoryError):
        return ("the machine ran out of memory. Close other programs, or use a machine with more memory (or a "
                "smaller model or --max-seq-len); no bundle was written.")
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {error.filename}" if error.filename else ""
        return f"no space left on the device{where}. Free some disk space and run again; no bundle was written."
    if isinstance(error, OSError) and error.filename and error.strerror:  # the file system refused a path
        return f"cannot use {error.filename} ({error.strerror}); check the path and its permissions, or choose another."
    if isinstance(error, ModuleNotFoundError) and error.name and not error.name.startswith("mobilekit"):
        return (f"the Python package {error.name!r} is not installed or is broken: reinstall mobilekit with its "
                "extras, e.g. pip install 'mobilekit[onnx,coreml]'.")
    return None


def _write_crash_log(error: Exception) -> Path:
    """The traceback, command line and versions in a log file under the cache folder (or
    the temporary folder where that cannot be written)."""
    text = (f"mobilekit {_own_version()} on Python {platform.python_version()}, {platform.platform()}\n"
            f"command: {' '.join(sys.argv)}\n\n" + "".join(traceback.format_exception(error)))
    name = f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in (cache_dir() / "logs", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
            return folder / name
        except OSError:
            continue
    return Path("(no writable folder for the log)")


def _own_version() -> str:
    try:
        return version("mobilekit")
    except PackageNotFoundError:
        return "(not installed)"


@click.group(cls=MobilekitGroup)
@click.version_option(package_name="mobilekit")
@click.option("--debug", is_flag=True, help="Print tracebacks (also MOBILEKIT_DEBUG=1); implies --verbose.")
@click.option("--verbose", is_flag=True,
              help="Show the libraries' own warnings and logs on the terminal (also MOBILEKIT_VERBOSE=1); "
                   "by default they go to a log file named at the end.")
def main(debug, verbose):
    """Export small language models to ExecuTorch, ONNX and Core ML bundles for phone apps.

    \b
    Exit codes: 0 done, 1 input or environment problem (the message says how to fix it),
    2 usage error, 3 validation failed, 4 matrix regression, 70 a bug in mobilekit (see the
    log file named), 130 interrupted (Ctrl-C), 143 terminated.
    """


def support_markdown() -> str:
    """The README's support table, generated from the recipe and target registries."""
    recipes = _module("recipes")
    names = targets.names()
    lines = ["| recipe | family | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for recipe in recipes.all_recipes():
        cells = [f"{support_cell(recipe, targets.get(t))} ({'/'.join(targets.get(t).schemes)})" for t in names]
        lines.append(f"| `{recipe.id}` | {recipe.family} | " + " | ".join(cells) + " |")
    lines += ["", "Any checkpoint of these architectures exports with `--checkpoint DIR_OR_GGUF` and no recipe:", "",
              "| family | architectures | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for family, architectures in family_rows():
        cells = ["/".join(targets.get(t).schemes) for t in names]
        lines.append(f"| {family} | {', '.join(architectures)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def family_rows() -> list[tuple[str, tuple[str, ...]]]:
    families = _module("families")
    return [(name, families.get(name).architectures) for name in families.names()]


@main.command("list")
@click.option("--markdown", is_flag=True, help="Print the README's support table instead.")
def list_cmd(markdown):
    """Recipes x targets: what is supported, and the default quant scheme per target."""
    from rich.table import Table

    if markdown:
        click.echo(support_markdown())
        return
    recipes = _module("recipes")
    table = Table(title="mobilekit recipes (default quant per target)")
    table.add_column("recipe")
    table.add_column("family")
    for name in targets.names():
        table.add_column(name)
    for recipe in recipes.all_recipes():
        cells = [support_cell(recipe, targets.get(t)) for t in targets.names()]
        table.add_row(recipe.id, recipe.family, *cells)
    from rich.console import Console

    Console().print(table)
    families_table = Table(title="families: any checkpoint of these architectures exports with --checkpoint")
    for column in ("family", "architectures", *(f"{t} schemes" for t in targets.names())):
        families_table.add_column(column)
    for family, architectures in family_rows():
        families_table.add_row(family, ", ".join(architectures), *("/".join(targets.get(t).schemes) for t in targets.names()))
    Console().print(families_table)


def support_cell(recipe, target) -> str:
    return recipe.default_quant.get(target.name, target.default_scheme)


@main.command()
@click.argument("recipe_id")
def info(recipe_id):
    """What RECIPE resolves to: checkpoint, family, sizes and defaults."""
    recipe = _module("recipes").get(recipe_id)
    family = _module("families").get(recipe.family)
    rows = {
        "recipe": recipe.id,
        "name": recipe.name,
        "family": f"{family.name} ({', '.join(family.architectures)})",
        "checkpoint": f"{recipe.repo}@{recipe.revision}",
        "default source": recipe.checkpoint_source,
        "license": recipe.license,
        "max_seq_len": str(recipe.max_seq_len),
        "default quant": ", ".join(f"{t}={support_cell(recipe, targets.get(t))}" for t in targets.names()),
    }
    rows.update(_resolved_sizes(recipe))
    if recipe.special_ids == "tokenizer":
        rows["special ids"] = "bos/eos from the tokenizer (config.json's are ignored)"
    if recipe.chat_template:
        rows["prompt"] = "the recipe's chat template (the tokenizer has none)"
    if recipe.tokenizer:
        rows["tokenizer"] = (f"{recipe.tokenizer['repo']}@{recipe.tokenizer['revision']} when the checkpoint has none "
                             "(--tokenizer overrides)")
    if recipe.notes:
        rows["notes"] = recipe.notes
    for key, value in rows.items():
        click.echo(f"{key:>15}: {value}")


def _names_local_files(source: str) -> bool:
    """Whether checkpoint.resolve_spec reads `source` from local files (a folder or a .gguf)
    rather than from the recipe's stored config.json; an unusable path is its to report."""
    try:
        path = Path(source).expanduser()
        return path.suffix == ".gguf" or path.is_dir()
    except (RuntimeError, OSError, ValueError):
        return True


def _resolved_sizes(recipe) -> dict[str, str]:
    """Layer sizes from the checkpoint's config (never downloads weights)."""
    source = recipe.checkpoint_source
    try:
        if recipe.config and not _names_local_files(source):
            # what checkpoint.resolve_spec reads for such a source, without loading the checkpoint code
            spec = _module("checkpoint_config").spec_from_config(
                dict(recipe.config), f"the recipe's stored [config] of {source}")
        else:
            spec = _module("checkpoint").resolve_spec(source, dict(recipe.config) or None)
    except CheckpointError as e:
        return {"sizes": f"unknown until the checkpoint is available ({str(e).split('(')[0].strip()})"}
    if spec.uniform_layers:
        heads = f"heads {spec.num_heads}/{spec.num_kv_heads} (q/kv)"
    else:  # OpenELM's layer-wise scaling: smallest-largest over the layers
        layers = range(spec.num_layers)
        heads = (f"heads {min(map(spec.layer_heads, layers))}-{spec.num_heads}/"
                 f"{min(map(spec.layer_kv_heads, layers))}-{spec.num_kv_heads} (q/kv, per layer), "
                 f"MLP {min(map(spec.layer_intermediate, layers))}-{spec.intermediate_size}")
    return {
        "sizes": f"{spec.num_parameters / 1e6:.1f}M parameters, {spec.num_layers} layers, hidden {spec.hidden_size}, "
                 f"{heads}, head_dim {spec.head_dim}, "
                 f"vocab {spec.vocab_size}, context {spec.max_position_embeddings}",
    }


@main.command()
@click.argument("recipe_id", required=False)
@click.option("--target", "target_name", type=click.Choice(TARGET_CHOICES), required=True,
              help="Artefact kind; 'all' writes one bundle per target.")
@click.option("--quant", type=click.Choice(quantize.names()), default=None,
              help="Quantization scheme (default: the recipe's for the target).")
@click.option("--max-seq-len", type=int, default=None, help="Context length (default: the recipe's).")
@click.option("--checkpoint", "checkpoint_source", default=None,
              help="embedded | PATH (HF folder or .gguf) | owner/name[@revision]. Without RECIPE_ID, "
                   "the family is detected from the checkpoint.")
@click.option("--output", type=click.Path(path_type=Path), default=None,
              help="Bundle folder (default out/<recipe>-<target>-<quant>); with --target all, a parent folder.")
@click.option("--tokenizer", "tokenizer_source", default=None,
              help="Tokenizer folder or owner/name[@revision], overriding the checkpoint's and the recipe's "
                   "(OpenELM checkpoints ship none).")
@click.option("--max-size", default=None, metavar="SIZE",
              help="With --quant auto: the best quality within this size, e.g. 110MB.")
@click.option("--max-ppl-increase", type=float, default=None, metavar="PERCENT",
              help="With --quant auto: the smallest bundle whose perplexity rises at most this much, e.g. 5.")
@click.option("--validate/--no-validate", default=True, help="Check the artefact against the reference.")
@click.option("--keep-failed", is_flag=True, help="Write the bundle even if validation misses a budget.")
def export(recipe_id, target_name, quant, max_seq_len, checkpoint_source, tokenizer_source, output, max_size,
           max_ppl_increase, validate, keep_failed):
    """Export RECIPE_ID (or --checkpoint) to a validated bundle."""
    if recipe_id is None and checkpoint_source is None:  # said in the CLI's own terms, before any import
        raise click.UsageError("give RECIPE_ID, or --checkpoint PATH for a checkpoint without a recipe")
    names = targets.names() if target_name == "all" else [target_name]
    with _progress("export") as progress:
        results, failures = _module("api").export_each(
            recipe_id, names, checkpoint=checkpoint_source, quant=quant, output=output, max_seq_len=max_seq_len,
            tokenizer=tokenizer_source, max_size=max_size, max_ppl_increase=max_ppl_increase, validate=validate,
            keep_failed=keep_failed, progress=progress)
    for result in results:
        click.echo(f"Wrote {result.path}  ({result.manifest['size_bytes'] / 1e6:.1f} MB, "
                   f"export {result.manifest['export']['seconds']:.1f} s)")
        _print_validation(result.manifest["validation"])
    for name, error in failures:
        click.secho(f"Error ({name}): {error}", fg="red", err=True, file=_terminal)
    if failures:
        sys.exit(EXIT_VALIDATION if all(isinstance(e, ValidationFailed) for _, e in failures) else EXIT_INPUT)


def _print_validation(validation: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    if not validation.get("performed"):
        click.echo("validation: skipped (--no-validate)")
        return
    table = Table(title=f"validation vs {validation['reference']}")
    for col in ("stage", "runtime", "max |Δlogit|", "cos min/mean", "top-1", "greedy", "ppl ref→art", "result"):
        table.add_column(col)
    for stage in ("stage1", "stage2"):
        rec = validation[stage]
        if "skipped" in rec:  # no independent reference (a family transformers lacks)
            table.add_row(stage, "skipped", "", "", "", "", "", "")
            continue
        m = rec["metrics"]
        table.add_row(
            stage, rec["runtime"], f"{m['max_abs_logit_error']:.2e}", f"{m['min_cosine']:.4f}/{m['mean_cosine']:.4f}",
            f"{m['top1_agreement']:.1%}", f"{m['greedy_match']:.1%}",
            f"{m['reference_ppl']:.2f}→{m['ppl']:.2f} ({m['ppl_increase_pct']:+.2f}%)",
            "[green]pass[/green]" if rec["passed"] else "[red]FAIL[/red]",
        )
    Console().print(table)
    app = validation["stage2"].get("app_runtime")
    if app:
        click.echo(f"stage2 through the app runtime ({app['runtime']}): greedy match {app['greedy_match']:.1%}")
    for stage in ("stage1", "stage2"):
        for miss in validation[stage]["misses"]:
            click.secho(f"  {stage}: {miss}", fg="red")


@main.command("validate")
@click.argument("bundle_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--checkpoint", "checkpoint_source", default=None,
              help="Reference checkpoint, if the bundle's own source cannot be resolved here.")
@click.option("--tokenizer", "tokenizer_source", default=None,
              help="Tokenizer folder or owner/name[@revision], as given to export.")
@click.option("--trust-remote-code", is_flag=True,
              help="For families transformers lacks (OpenELM, MiniCPM, DCLM): use the checkpoint's own modeling "
                   "code as the reference. It runs code from the checkpoint: only for checkpoints you trust.")
@click.option("--report", "report_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write the fresh validation record as JSON to this file (the bundle itself is never changed).")
def validate_cmd(bundle_dir, checkpoint_source, tokenizer_source, trust_remote_code, report_path):
    """Re-run validation of BUNDLE_DIR against its reference (read-only); exit 3 if a budget is missed."""
    if report_path is not None and not report_path.parent.is_dir():  # before the work, not after it
        raise ResourceError(f"--report {report_path}: the folder {report_path.parent} does not exist; create it first")
    with _progress("validate") as progress:
        validation = _module("api").load_bundle(bundle_dir).validate(checkpoint_source, tokenizer_source,
                                                                     trust_remote_code, progress)
    _print_validation(validation)
    if report_path is not None:
        report_path.write_text(json.dumps(validation, indent=2) + "\n")
        click.echo(f"Wrote {report_path}")
    if not validation["passed"]:
        click.secho("Error: validation failed", fg="red", err=True, file=_terminal)
        sys.exit(EXIT_VALIDATION)


@main.command()
def doctor():
    """What this machine has for mobilekit (each target's converter and runtime, the embedded
    model, torch, memory and disk against the largest recipe) and what to install for the rest.
    Exits 1 when something required is missing."""
    from rich.console import Console
    from rich.table import Table

    checks = _module("doctor").run()
    table = Table(title="mobilekit doctor")
    for column in ("check", "", "what is here", "to fix"):
        table.add_column(column)
    for check in checks:
        mark = "[green]ok[/green]" if check.ok else ("[yellow]--[/yellow]" if check.optional else "[red]missing[/red]")
        table.add_row(check.name, mark, check.detail, check.fix)
    Console().print(table)
    if not all(check.ok or check.optional for check in checks):
        sys.exit(EXIT_INPUT)


@main.command()
@click.argument("bundle_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repo as private (an existing repo keeps its visibility).")
def push(bundle_dir, repo_id, private):
    """Upload BUNDLE_DIR to the Hugging Face Hub model repo REPO_ID (OWNER/NAME), with its model
    card (README.md). Checks every file's sha256 first; uses your `hf auth login` token or HF_TOKEN."""
    url = _module("hub").push(bundle_dir, repo_id, private=private)
    click.echo(f"Pushed {bundle_dir} to {url}")


@main.command()
@click.argument("bundle_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("prompt")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=128, show_default=True,
              help="At most this many new tokens (fewer where the bundle's context ends first).")
@click.option("--chat/--no-chat", default=True, help="Wrap PROMPT in the bundle's chat template.")
@click.option("--template-var", "template_vars", multiple=True, metavar="KEY=VALUE",
              help="A variable for the chat template, repeatable: enable_thinking=false turns off Qwen3's and "
                   "SmolLM3's thinking block.")
def generate(bundle_dir, prompt, max_new_tokens, chat, template_vars):
    """Stream a greedy reply to PROMPT from BUNDLE_DIR through the runtime apps use (read-only)."""
    try:
        variables = dict(chat_format.template_variable(v) for v in template_vars)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--template-var") from None
    result = _module("api").load_bundle(bundle_dir).generate(
        prompt, max_new_tokens, chat=chat, template_vars=variables, on_text=lambda piece: click.echo(piece, nl=False),
        on_note=lambda note: click.secho(f"Note: {note}", fg="yellow", err=True, file=_terminal))
    click.echo()
    click.secho(
        f"[{result.runtime}] prompt {result.prompt_tokens} tokens, TTFT {result.time_to_first_token_s * 1000:.0f} ms, "
        f"prefill {result.prefill_tokens_per_s:.0f} tok/s, decode {result.decode_tokens_per_s:.1f} tok/s",
        fg="cyan", err=True, file=_terminal,
    )


@main.command()
@click.argument("bundle_dirs", nargs=-1, required=True,
                type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--compare-eager", is_flag=True, help="Also run transformers eager fp32 (generate) in this run.")
@click.option("--new-tokens", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--quality", is_flag=True,
              help="Also measure each bundle against its checkpoint's reference: perplexity increase, top-1 "
                   "agreement and degenerate long continuations, on text the calibration never saw.")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
def bench(bundle_dirs, compare_eager, new_tokens, quality, as_json):
    """Prefill and decode tokens/s, time to first token, peak RSS and size (and --quality),
    side by side."""
    bench_lib = _module("bench")
    rows = bench_lib.run(list(bundle_dirs), compare_eager=compare_eager, new_tokens=new_tokens,
                         on_note=lambda note: click.secho(f"Note: {note}", fg="yellow", err=True, file=_terminal), quality=quality)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    bench_lib.print_table(rows)


@main.command()
@click.argument("out_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--bundle", "bundle_dirs", multiple=True, type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="A bundle whose manifest (and chat template) becomes a golden case; repeatable.")
@click.option("--templates", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="JSON file of extra chat-template sources (see tests/apps/chat_templates.json).")
@click.option("--no-embedded", is_flag=True, help="Leave out the embedded SmolLM2 tokenizer's template.")
def goldens(out_dir, bundle_dirs, templates, no_embedded):
    """Write the golden vectors the demo apps' core logic is tested against (android-demo, ios-demo)."""
    golden = _module("goldens")
    manifests = {f"{m['target']}:{m.get('recipe') or d.name}": m
                 for d in bundle_dirs for m in [bundle.read_manifest(d)]}
    extra = json.loads(templates.read_text())["sources"] if templates else []
    sources = ([] if no_embedded else [golden.embedded_template_source()]) + golden.recipe_template_sources(extra)
    seen = {s["template"] for s in sources}
    for name, manifest in manifests.items():
        if manifest.get("chat_template") and manifest["chat_template"] not in seen:
            seen.add(manifest["chat_template"])
            sources.append({"name": name, "template": manifest["chat_template"], "bos_token": manifest.get("bos_token"),
                            "eos_token": manifest.get("eos_token"), "provenance": f"bundle {name} (its tokenizer)"})
    for path in golden.write(out_dir, manifests, sources):
        click.echo(f"Wrote {path}")


def _split_choices(allowed: list[str], what: str):
    """A click callback for comma-separated lists (`--targets executorch,onnx`), checked."""

    def parse(_ctx, _param, values):
        if not values:
            return None
        chosen = [v.strip() for value in values for v in value.split(",") if v.strip()]
        unknown = [v for v in chosen if v not in allowed]
        if unknown:
            raise click.BadParameter(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(allowed)}")
        return list(dict.fromkeys(chosen))

    return parse


def _tolerance_options(command):
    for name, help_text in reversed([
        ("size_growth", "Artefact size may grow by this fraction before --baseline calls it a regression."),
        ("error_growth", "Stage-2 max |Δlogit| and perplexity increase may grow by this fraction (plus a small "
                         "absolute floor)."),
        ("top1_drop", "Stage-2 top-1 agreement may drop by this much (absolute)."),
    ]):
        command = click.option(f"--{name.replace('_', '-')}", name, type=click.FloatRange(min=0),
                               default=DEFAULT_TOLERANCES[name], show_default=True, help=help_text)(command)
    return command


@main.group("matrix", invoke_without_command=True)
@click.option("--recipes", "recipe_globs", default="*", show_default=True,
              help="Recipe ids or globs, comma-separated (e.g. 'qwen2-*,smollm2-135m').")
@click.option("--targets", "target_names", multiple=True, callback=_split_choices(targets.names(), "target"),
              help="Targets, comma-separated (default: all).")
@click.option("--quant", "schemes", multiple=True, callback=_split_choices(quantize.fixed_names(), "quant scheme"),
              help="Schemes, comma-separated (default: every scheme each target offers).")
@click.option("--checkpoint-mode", "mode", type=click.Choice(["tiny", "hub"]), default="tiny", show_default=True,
              help="tiny: each recipe's architecture at a tiny size with random weights, built here (no network). "
                   "hub: the recipes' pinned checkpoints.")
@click.option("--shard", "shard_text", default="1/1", show_default=True,
              help="Run shard I of N (a contiguous slice of the sorted cells); join shard reports with "
                   "`mobilekit matrix merge`.")
@click.option("--output", type=click.Path(path_type=Path, file_okay=False), default=Path("out/matrix"),
              show_default=True, help="Folder for report.json, report.html and the cells' logs (must not exist).")
@click.option("--baseline", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="A previous report.json: exit 4 if a cell regressed against it.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Recipes run side by side (each in its own process, sharing the CPU cores).")
@click.option("--cell-timeout", type=click.FloatRange(min=1), default=3600, show_default=True,
              help="Seconds before a cell's process is killed and the cell recorded as timed out.")
@click.option("--keep-bundles", is_flag=True, help="Keep each cell's bundle under OUTPUT/work (hub bundles are GBs).")
@click.option("--list", "list_only", is_flag=True, help="Print the cells (of this shard) and exit.")
@click.option("--list-shards", "cells_per_shard", type=click.IntRange(min=1), default=None,
              help="Print, as a JSON list, the --shard values that split the selection into shards of at most "
                   "this many cells (a CI job matrix), and exit.")
@_tolerance_options
@click.pass_context
def matrix(ctx, recipe_globs, target_names, schemes, mode, shard_text, output, baseline, jobs, cell_timeout,
           keep_bundles, list_only, cells_per_shard, **tolerances):
    """Export and validate every RECIPE x TARGET x QUANT cell, each isolated, into report.json + report.html.

    Exit status: 0 when every cell passed (with --baseline: when nothing regressed), 1 when a cell
    did not pass and no --baseline was given, 4 when a cell regressed against --baseline.
    """
    if ctx.invoked_subcommand is not None:
        return
    mx = _module("matrix")
    index, count = mx.parse_shard(shard_text)
    everything = mx.select_cells(recipe_globs, target_names, schemes)
    if cells_per_shard:
        click.echo(json.dumps(mx.shard_labels(mx.shard_count(len(everything), cells_per_shard))))
        return
    cells = mx.shard(everything, index, count)
    if list_only:
        for cell in cells:
            click.echo(cell.id)
        return
    base = mx.read_report(baseline) if baseline else None  # a bad baseline fails before any work
    if output.exists() and any(output.iterdir()):
        raise mx.MatrixError(f"{output} already exists and is not empty; remove it or pass another --output")
    selection = {"recipes": recipe_globs, "targets": target_names or targets.names(),
                 "quant": schemes or quantize.fixed_names(), "shards": [shard_text]}
    started = time.perf_counter()
    with _matrix_progress(len(cells), mode) as on_event:
        records = mx.run(cells, mode, output, jobs=jobs, cell_timeout=cell_timeout, keep_bundles=keep_bundles,
                         on_event=on_event)
    report = mx.build_report(records, mode, selection, time.perf_counter() - started)
    _finish_matrix(report, output, base, str(baseline) if baseline else None, tolerances)


@matrix.command("merge")
@click.argument("reports", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--output", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Folder for the merged report.json and report.html.")
@click.option("--baseline", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="A previous report.json: exit 4 if a cell regressed against it.")
@_tolerance_options
def matrix_merge(reports, output, baseline, **tolerances):
    """Join shard REPORTS (report.json of each `mobilekit matrix --shard I/N`) into one.

    Exits as `mobilekit matrix` does, and 1 when a shard of the N is missing (the merged report
    is written anyway).
    """
    mx = _module("matrix")
    shards = {str(path): mx.read_report(path) for path in reports}
    base = mx.read_report(baseline) if baseline else None
    merged, missing = mx.merge(shards)
    if missing:
        click.secho(f"Error: shard(s) {', '.join(missing)} missing: their cells are not in the report", fg="red",
                    err=True, file=_terminal)
    _finish_matrix(merged, output, base, str(baseline) if baseline else None, tolerances,
                   failed_already=bool(missing))


@contextmanager
def _matrix_progress(total: int, mode: str):
    """A progress bar over the cells with a line per finished cell; without a terminal the
    lines alone."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = _console()
    running: set[str] = set()
    colours = {"passed": "green", "failed": "yellow"}

    def line(cell, record):
        colour = colours.get(record["status"], "red")
        why = "" if record["status"] == "passed" else f": {failure_reason(record)[:160]}"
        return f"[{colour}]{record['status']:>7}[/{colour}] {cell.id} ({record['seconds']:.1f} s){why}"

    if not console.is_terminal:
        def on_event(kind, cell, record):
            if kind == "end":
                console.log(line(cell, record), highlight=False)

        yield on_event
        return
    with Progress(TextColumn(f"matrix ({mode})"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=console) as progress:
        task = progress.add_task("", total=total)

        def on_event(kind, cell, record):
            (running.add if kind == "start" else running.discard)(cell.id)
            if kind == "end":
                progress.console.log(line(cell, record), highlight=False)
                progress.advance(task)
            progress.update(task, description=", ".join(sorted(running)))

        yield on_event


def _finish_matrix(report: dict, output: Path, baseline: dict | None, baseline_path: str | None, tolerances: dict,
                   failed_already: bool = False) -> None:
    mx = _module("matrix")
    if baseline is not None:
        report["baseline"] = mx.compare(report, baseline, baseline_path, tolerances)
    json_path, html_path = mx.write_report(report, output)
    summary = report["summary"]
    click.echo(f"{summary['passed']}/{summary['total']} cells passed ({', '.join(f'{summary[s]} {s}' for s in mx.STATUSES[1:] if summary[s]) or 'no failures'}) "
               f"in {report['wall_seconds']:.0f} s")
    click.echo(f"Wrote {json_path} and {html_path}")
    if baseline is not None:
        section = report["baseline"]
        for regression in section["regressions"]:
            click.secho(f"  regression {regression['cell']}: {regression['detail']}", fg="red", err=True, file=_terminal)
        if section["fixed"]:
            click.echo(f"  fixed since the baseline: {', '.join(section['fixed'])}")
        if section["missing"]:
            click.echo(f"  baseline cells not in this report: {len(section['missing'])}")
        if section["regressions"]:
            click.secho(f"Error: {len(section['regressions'])} regression(s) against {baseline_path}", fg="red",
                        err=True, file=_terminal)
            sys.exit(4)
        if failed_already:
            sys.exit(1)
        return
    if failed_already or summary["passed"] != summary["total"]:
        sys.exit(1)


if __name__ == "__main__":  # `python -m mobilekit.cli`, as the tests run it in a subprocess
    main()
