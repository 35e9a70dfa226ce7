"""The lowering kit: what every target does on its way from the mobilekit Decoder to an
artefact, written once. A target is an adapter that picks among these (LLMEdgeManager's
stages: source transform -> export -> lower -> serialize). Imports torch only where a helper
computes with it; never imports targets/ or runtime/ (import contracts in pyproject.toml).
Each target's export-time torch forms live beside it, one module per target
(lowering/executorch.py, lowering/onnx.py, lowering/coreml.py), so that the target modules
themselves import without torch.

- `stage`: one named, timed step of an export; an exception from the converter inside it
  becomes an ExportError that names the step (mobilekit's own errors pass through).
- `replace_modules` / `modules_replaced`: the one module-swap mechanism, for a target's
  export-time forms of norms and rotaries (permanent, or restored on exit).
- `spell_out_tanh_gelu` / `tanh_gelu_spelled_out`: the MLPs' tanh-GELU as elementwise ops.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Callable, Iterator

from mobilekit.errors import ExportError, MobilekitError

if TYPE_CHECKING:
    from torch import nn


@contextlib.contextmanager
def stage(timings: dict[str, float], key: str, progress: Callable[[str], None], message: str | None,
          failing: str | None = None) -> Iterator[None]:
    """Say `message` (if any), time the block into timings[key]; with `failing` ("torch.export
    of the ONNX decoder"), a converter's exception becomes ExportError(f"{failing} failed: ...")."""
    if message:
        progress(message)
    start = time.perf_counter()
    try:
        yield
    except MobilekitError:
        raise
    except Exception as e:
        if failing is None:
            raise
        raise ExportError(f"{failing} failed: {type(e).__name__}: {e}") from e
    timings[key] = time.perf_counter() - start


Swap = tuple["nn.Module", str, "nn.Module"]


def replace_modules(root: "nn.Module", replacement: Callable[["nn.Module"], "nn.Module | None"]) -> list[Swap]:
    """In place: each module under `root` for which replacement(module) returns a module is
    replaced by it (and its own children are not visited). Returns (parent, name, original)
    of each swap, for `restore_modules`."""
    swapped = []
    for name, child in list(root.named_children()):
        new = replacement(child)
        if new is None:
            swapped += replace_modules(child, replacement)
        else:
            swapped.append((root, name, child))
            setattr(root, name, new)
    return swapped


def restore_modules(swapped: list[Swap]) -> None:
    for parent, name, original in reversed(swapped):
        setattr(parent, name, original)


@contextlib.contextmanager
def modules_replaced(root: "nn.Module", replacement: Callable[["nn.Module"], "nn.Module | None"]):
    """replace_modules for the duration of the block: the caller's model comes back as it was."""
    swapped = replace_modules(root, replacement)
    try:
        yield root
    finally:
        restore_modules(swapped)


def spell_out_tanh_gelu(root: "nn.Module") -> list[tuple["nn.Module", Callable]]:
    """In place: every module whose activation (`act`: the MLPs, Gemma 3n's per-layer gate)
    is the tanh-approximated GELU (Gemma, Phi-2, GPT-2) computes it as elementwise ops.
    Converters lose it otherwise: XNNPACK rejects
    gelu(approximate="tanh") and splits the graph around it; coremltools 9 does not read the
    keyword and converted it as the exact-erf GELU (5e-4 off per element). In fp16 the x^3
    term overflows only where tanh is already +-1, so the limits stay right. Returns the
    (module, original activation) pairs for undoing."""
    # here, not at the top: target modules import this package and must stay torch-free
    from mobilekit.modeling.decoder import gelu_tanh, gelu_tanh_elementwise

    swapped = [(m, m.act) for m in root.modules() if getattr(m, "act", None) is gelu_tanh]
    for m, _ in swapped:
        m.act = gelu_tanh_elementwise
    return swapped


@contextlib.contextmanager
def tanh_gelu_spelled_out(root: "nn.Module"):
    swapped = spell_out_tanh_gelu(root)
    try:
        yield root
    finally:
        for m, act in swapped:
            m.act = act
