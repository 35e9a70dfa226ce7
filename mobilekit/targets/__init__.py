"""Target registry: every module of this package (executorch, onnx, coreml) defines one
Target as `TARGET`. Registry key = module stem = CLI value; the modules are found by listing
the package, so a new target is a new module here (plus its formats/, lowering/ and runtime/
modules), with no list to edit.

Every target is registered always; a target checks that its converter and runtime are
installed only when it is used (TargetUnavailable names the pip extra to install).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from mobilekit import quantize
from mobilekit.errors import BundleError, TargetUnavailable, UnknownNameError
from mobilekit.runtime import GenerationResult

if TYPE_CHECKING:  # the registry stays importable without torch (`mobilekit list`, `--help`)
    from mobilekit.modeling import Decoder

# Listing the package's files imports nothing: `mobilekit --help` stays light.
TARGET_MODULES = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


@dataclass
class ExportRequest:
    """What a target needs to write its artefact into a (temporary) bundle folder."""

    # fp32, eval, no grads. A target may set it to None once its graph is lowered, so the
    # weights are freed before the artefact is serialized (the pipeline keeps no other copy).
    decoder: Decoder | None
    scheme: str
    max_seq_len: int
    bos_id: int | None
    eos_ids: list[int]
    out_dir: Path
    progress: Callable[[str], None] = lambda _msg: None
    # --quant auto: decoder module name -> bits (precision.Plan.bits())
    plan: dict[str, int] | None = None


@dataclass
class Artefact:
    """What a target wrote: files (relative to the bundle) and facts for the manifest."""

    files: list[str]
    io: dict  # inputs / outputs / cache names and shapes, the contract apps rely on
    extra: dict = field(default_factory=dict)


class Target:
    """Base class; subclasses override the methods below."""

    name: str = ""
    default_scheme: str = ""
    runtime: str = ""  # the runtime apps use, named in the manifest and in generate's output
    packages: tuple[str, ...] = ()  # whose versions the manifest records
    # Peak memory of exporting a whole fp32 decoder, as a multiple of its fp32 size (the
    # pipeline refuses what would not fit). Not used when the scheme quantizes layer by
    # layer as the weights load (layer_quantizer).
    export_memory_factor: float = 3.0

    # What the converter and runtime need, imported by check_available (importing some
    # registers ops: ExecuTorch's custom ops and quantized kernels), and how to install them.
    required_modules: tuple[str, ...] = ()
    install: str = "pip install 'mobilekit'"

    def check_available(self, modules: tuple[str, ...] | None = None) -> None:
        """Import `modules` (default: all of required_modules); TargetUnavailable naming the
        one missing and the install command otherwise. The one availability check of every
        target: each step (export, a session, generation) asks for the modules it needs."""
        for name in self.required_modules if modules is None else modules:
            try:
                importlib.import_module(name)
            except ImportError as e:
                raise TargetUnavailable(f"the {self.name} target needs {name} ({e}): {self.install}") from e

    # Schemes are the (target, scheme) quantizers the target's module registered
    # (quantize.quantizer): asking for any other is SchemeNotSupported, never a fall-through.

    @property
    def schemes(self) -> tuple[str, ...]:
        """The schemes that need no goal: what the nightly matrix sweeps."""
        return tuple(s for s in self.offered_schemes() if s not in quantize.GOAL_SCHEMES)

    def offered_schemes(self) -> tuple[str, ...]:
        return quantize.schemes_of(self.name)

    def quantizer(self, scheme: str) -> quantize.Quantizer:
        return quantize.quantizer_for(self.name, scheme)

    def check_scheme(self, scheme: str) -> None:
        self.quantizer(scheme)

    def layer_quantizer(self, scheme: str) -> Callable | None:
        """A function that quantizes part of the decoder in place as the checkpoint loads it
        (Checkpoint.build_decoder's `prepare`: each layer as it completes, then the whole
        decoder, whose embeddings and head are still in their stored dtype), or None where
        the scheme's quantizer works on the whole exported model. This way a 12B model never
        exists whole at fp32, nor does its 671M-entry embedding or head."""
        chosen = self.quantizer(scheme)
        return chosen if chosen.layerwise else None

    def export(self, request: ExportRequest) -> Artefact:
        raise NotImplementedError

    def runtime_versions(self) -> dict[str, str]:
        versions = {}
        for package in self.packages:
            try:
                versions[package] = version(package)
            except PackageNotFoundError:
                versions[package] = "not installed"
        return versions

    def open_session(self, bundle_dir: Path, manifest: dict):
        """A runtime.Session over the artefact, for stage-2 validation."""
        raise NotImplementedError

    def generate(self, bundle_dir: Path, manifest: dict, prompt: str, max_new_tokens: int,
                 on_text: Callable[[str], None]) -> GenerationResult:
        """Generate through the runtime apps use; `prompt` is already chat-formatted."""
        raise NotImplementedError

    def weight_format(self):
        """quantize.WeightFormat of this target's quantizer, for --quant auto; None where
        the target does not offer it."""
        return None

    def app_runtime_greedy(self, bundle_dir: Path, prompt_ids: list[int], max_new_tokens: int) -> list[int] | None:
        """Greedy token ids through the app runtime, when it differs from the validation
        Session's runtime and accepts token ids; None = nothing more to check."""
        return None


def names() -> list[str]:
    return sorted(TARGET_MODULES)


def get(name: str) -> Target:
    if name not in TARGET_MODULES:
        raise UnknownNameError("target", name, names())
    return importlib.import_module(f"mobilekit.targets.{name}").TARGET


def of_bundle(folder: Path, manifest: dict) -> Target:
    """The target that wrote a bundle, as its manifest names it."""
    try:
        return get(manifest["target"])
    except UnknownNameError as e:
        raise BundleError(f"{Path(folder) / 'mobilekit.json'} names target {manifest['target']!r}, which this "
                          f"mobilekit does not have ({', '.join(names())}); re-export the bundle, or use the "
                          "mobilekit that wrote it") from e
