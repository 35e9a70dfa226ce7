"""Independent eager references for the families transformers does not implement.

One small module per family (`minicpm`, `openelm`, `open_lm`), each a literal transcription
of the published forward pass (ARCHITECTURES.md §12-14), written without mobilekit's
decoder: they are what stage 1 compares the decoder with on tiny random configs.

Each module offers the same surface:

  TINY_CONFIG                         a tiny config.json dict in the checkpoint's own schema
  checkpoint_shapes(config)           {weight name: shape}, names as the real checkpoints store them
  random_state_dict(config, seed)     random weights with exactly those names and shapes
  Reference(config, state)            .forward(input_ids [B,T]) -> logits [B,T,V] (fp32, full
                                      causal attention, no cache); refuses a state dict whose
                                      names or shapes differ from checkpoint_shapes(config)

and this package adds what is shared by all three: `save_checkpoint` / `load_checkpoint`
(a config.json + model.safetensors folder, optionally with mobilekit's tiny tokenizer) and
`ReferenceLM`, an adapter with the slice of the transformers model API that
mobilekit.validate.compute_reference uses (`model(ids).logits`, `model.config.to_dict()`,
greedy `model.generate`).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from pathlib import Path
from types import SimpleNamespace

import torch

# One reference module per family transformers lacks, named as the family (its mobilekit
# module's stem); found by listing this package, as mobilekit.families finds its modules.
MODULES = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("test_"))


def module(family: str):
    """The reference module of `family`."""
    if family not in MODULES:
        raise KeyError(f"no reference for family {family!r}; references: {', '.join(MODULES)}")
    return importlib.import_module(f"{__name__}.{family}")


def tiny_configs() -> dict[str, dict]:
    """{family: its TINY_CONFIG}: what each of these families registers as its Family.tiny_config."""
    return {family: module(family).TINY_CONFIG for family in MODULES}


def check_state(state: dict, expected: dict, optional: dict | None = None) -> None:
    """Raise ValueError unless `state` has exactly the names of `expected` (plus any of
    `optional`), each with the expected shape."""
    optional = optional or {}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected) - set(optional))
    wrong = sorted(
        f"{name}: {tuple(state[name].shape)} != {tuple(shape)}"
        for name, shape in {**expected, **optional}.items()
        if name in state and tuple(state[name].shape) != tuple(shape)
    )
    if missing or unexpected or wrong:
        raise ValueError(f"state dict does not match the config: missing {missing[:6]}, "
                         f"unexpected {unexpected[:6]}, wrong shapes {wrong[:6]}")


def randomize(shapes: dict, seed: int = 0, std: float = 0.08) -> dict[str, torch.Tensor]:
    """Seeded random tensors: matrices N(0, std); 1-D weights (norm gains) near 1, as trained
    models have, but never exactly 1, so a dropped or misplaced gain shows."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            out[name] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        else:
            out[name] = std * torch.randn(shape, generator=gen)
    return out


def save_checkpoint(folder, config: dict, state: dict, tokenizer: bool = False) -> Path:
    """Write config.json + model.safetensors (and, if asked, mobilekit's tiny BPE tokenizer
    with config['vocab_size'] ids) into `folder`: a checkpoint folder of the family's layout."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    if tokenizer:
        from mobilekit.tiny import save_tiny_tokenizer

        vocab = config.get("vocab_size") or config["params_args_dict"]["vocab_size"]
        save_tiny_tokenizer(folder, vocab)
    return folder


def load_checkpoint(folder) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, state dict) of a folder written by save_checkpoint (or a real one-file checkpoint)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    state = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(file))
    return config, state


def reference_for(folder, family: str):
    """The family's Reference built from a checkpoint folder."""
    config, state = load_checkpoint(folder)
    return module(family).Reference(config, state)


class ReferenceLM:
    """What mobilekit.validate.compute_reference needs of a transformers model, over a
    Reference: `model(ids).logits`, `model.config.to_dict()` and greedy `generate` (full
    recompute each step: references have no cache)."""

    def __init__(self, reference, config: dict):
        self.reference = reference
        self.config = SimpleNamespace(to_dict=lambda: dict(config))

    @torch.no_grad()
    def __call__(self, input_ids, **_ignored):
        return SimpleNamespace(logits=self.reference.forward(input_ids))

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, max_new_tokens=16, do_sample=False,
                 eos_token_id=None, pad_token_id=None):
        if do_sample:
            raise ValueError("ReferenceLM.generate is greedy only")
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("ReferenceLM.generate takes unpadded prompts only")
        stops = set([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))
        ids = input_ids
        for _ in range(max_new_tokens):
            nxt = self.reference.forward(ids)[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
            if int(nxt) in stops:
                break
        return ids
