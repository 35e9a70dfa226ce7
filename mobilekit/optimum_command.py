"""The `optimum-cli export mobilekit` command: optimum's argparse front over mobilekit's own
CLI. It translates the arguments and calls `mobilekit export`, so the pipeline, validation,
messages, exit codes and bundle are the same ones. Registered by
optimum/commands/register/register_mobilekit.py (installed with the `optimum` extra)."""

from __future__ import annotations

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo


def export_arguments(model: str, output: str, target: str = "executorch", quant: str | None = None,
                     recipe: str | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    """`mobilekit export` arguments for optimum-cli's. --model is a recipe id when it names one
    (and no --recipe is given), else a checkpoint (folder, .gguf, owner/name[@revision]) read
    with --recipe's settings when one is given."""
    from mobilekit import recipes

    known = {r.id for r in recipes.all_recipes()}
    if recipe is None and model in known:
        args = ["export", model]
    else:
        args = ["export", *([recipe] if recipe else []), "--checkpoint", model]
    args += ["--target", target, "--output", output]
    if quant:
        args += ["--quant", quant]
    return args + list(extra)


class MobilekitExportCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(name="mobilekit", help="Export to a validated ExecuTorch, ONNX or Core ML bundle for phone "
                                                 "apps (mobilekit: quantized, validated through the app's runtime).")

    @staticmethod
    def parse_args(parser):
        parser.add_argument("-m", "--model", required=True,
                            help="A mobilekit recipe id (mobilekit list), a local Hugging Face folder, a .gguf file "
                                 "or a Hub id owner/name[@revision].")
        parser.add_argument("--target", default="executorch", choices=["executorch", "onnx", "coreml", "all"],
                            help="The runtime the app uses (default executorch).")
        parser.add_argument("--quant", default=None,
                            help="fp32, fp16, int8, int4 or auto (default: the recipe's choice per target).")
        parser.add_argument("--recipe", default=None,
                            help="Read --model as a checkpoint of this recipe (its template, stops and defaults).")
        parser.add_argument("--max-seq-len", default=None, help="Context length of the artefact.")
        parser.add_argument("--max-size", default=None, help="With --quant auto: best quality within SIZE, e.g. 110MB.")
        parser.add_argument("--no-validate", action="store_true", help="Skip validation.")
        parser.add_argument("output", help="Bundle folder to write.")

    def run(self):
        from mobilekit import cli

        a = self.args
        extra = (*(["--max-seq-len", a.max_seq_len] if a.max_seq_len else []),
                 *(["--max-size", a.max_size] if a.max_size else []),
                 *(["--no-validate"] if a.no_validate else []))
        # click's standalone mode ends the process with mobilekit's own exit code
        cli.main(args=export_arguments(a.model, a.output, a.target, a.quant, a.recipe, extra), prog_name="mobilekit")
