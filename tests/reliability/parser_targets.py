"""One "feed these bytes" function per parser of outside data, shared by the hypothesis tests
(tests/reliability/test_parsers.py) and the atheris harness (fuzz/fuzz_parsers.py).

A target takes the raw bytes of one outside file (or of the --checkpoint string) and a
Workspace, writes them where mobilekit reads them and calls the parser. A MobilekitError is
the parser's answer and is swallowed; any other exception is a bug and propagates. Seeds are
valid inputs the Workspace builds itself (tiny random checkpoints, no network), plus the real
manifests under parser_seeds/.

Issue 14: "Every parser of outside data must never end in a traceback."
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

os.environ["HF_HUB_OFFLINE"] = "1"  # never the hub, whatever the source string says
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from mobilekit.errors import MobilekitError  # noqa: E402

SEED_DIR = Path(__file__).with_name("parser_seeds")

# A Llama small enough that its safetensors / pickle seeds are a few KB (mutation-friendly).
MICRO_LLAMA = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32, "hidden_size": 16,
    "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
    "head_dim": 8, "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
}

# Created if a pickle ever ran code while being loaded (the "refused-code" seed's payload).
PICKLE_MARKER = Path(tempfile.gettempdir()) / "mobilekit-fuzz-pickle-ran-code"

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class _RunsCode:
    """Pickles to a call of open(PICKLE_MARKER, "w"): harmless, but visible if it ever runs."""

    def __reduce__(self):
        return open, (str(PICKLE_MARKER), "w")


class Workspace:
    """Scratch folders and the valid files the seeds are made of, built once under `root`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._seeds: dict[str, dict[str, bytes]] = {}

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    def seeds(self, name: str) -> dict[str, bytes]:
        """The seeds of target `name`, built once."""
        if name not in self._seeds:
            self._seeds[name] = TARGETS[name].seeds(self)
        return self._seeds[name]

    def scratch(self, name: str) -> Path:
        folder = self.root / "scratch" / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    @cached_property
    def micro_checkpoint(self) -> Path:
        """config.json + model.safetensors of MICRO_LLAMA (no tokenizer)."""
        from mobilekit.tiny import make_tiny_checkpoint

        folder = self.root / "micro"
        if not (folder / "model.safetensors").is_file():
            make_tiny_checkpoint(folder, MICRO_LLAMA, tokenizer=False)
        return folder

    @cached_property
    def tokenizer_checkpoint(self) -> Path:
        """The tiny 512-token BPE tokenizer next to TINY_LLAMA's config.json (no weights)."""
        from mobilekit.tiny import TINY_LLAMA, save_tiny_tokenizer

        folder = self.root / "tokenizer"
        if not (folder / "tokenizer.json").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            save_tiny_tokenizer(folder, 512)
            if not (folder / "special_tokens_map.json").is_file():  # transformers 5 writes none; older ones did
                (folder / "special_tokens_map.json").write_text(json.dumps(
                    {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>",
                     "pad_token": "<|im_end|>"}, indent=2))
            (folder / "config.json").write_text(json.dumps(TINY_LLAMA, indent=2))
        return folder

    @cached_property
    def gguf_seed(self) -> bytes:
        """A valid little GGUF: llama architecture, a few metadata kinds, two tiny tensors."""
        import numpy as np
        from gguf import GGUFWriter

        path = self.root / "seed.gguf"
        if not path.is_file():
            writer = GGUFWriter(str(path), "llama")
            writer.add_name("fuzz-seed")
            writer.add_context_length(64)
            writer.add_embedding_length(16)
            writer.add_block_count(1)
            writer.add_head_count(2)
            writer.add_layer_norm_rms_eps(1e-5)
            writer.add_token_list(["<s>", "</s>", "a", "b"])
            writer.add_token_scores([0.0, 0.0, -1.0, -2.0])
            writer.add_tensor("token_embd.weight", np.arange(64, dtype=np.float32).reshape(4, 16))
            writer.add_tensor("output_norm.weight", np.ones(16, dtype=np.float16))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
        return path.read_bytes()


# --- the targets --------------------------------------------------------------------------


def _swallow(call: Callable, *args, **kwargs):
    """The parser's result, or None where it answered with a MobilekitError."""
    try:
        return call(*args, **kwargs)
    except MobilekitError:
        return None


def run_recipe(data: bytes, ws: Workspace) -> None:
    """A recipe's TOML text (mobilekit/recipes/*.toml), through parse and the recipe's spec."""
    from mobilekit import recipes

    recipe = _swallow(recipes.parse, "fuzz", data.decode("utf-8", "replace"))
    if recipe is not None and recipe.config:
        _swallow(recipe.spec)


def run_manifest(data: bytes, ws: Workspace) -> None:
    """A bundle's mobilekit.json, then what readers do with an accepted one."""
    from mobilekit import bundle

    folder = ws.scratch("manifest")
    (folder / "mobilekit.json").write_bytes(data)
    manifest = _swallow(bundle.read_manifest, folder)
    if manifest is not None:
        use_manifest(folder, manifest)


def use_manifest(folder: Path, manifest: dict) -> None:
    """What mobilekit's readers take from a manifest read_manifest accepted (pipeline.revalidate,
    bench, cli generate / goldens, the targets' open_session, runtime.coreml): none of it may
    fail with anything but a MobilekitError."""
    from mobilekit import bundle, targets
    from mobilekit.pipeline import _source_of

    _swallow(bundle.verify_files, folder, manifest)
    _swallow(targets.get, manifest["target"])
    assert isinstance(manifest["max_seq_len"], int) and manifest["max_seq_len"] >= 1
    int(manifest["max_seq_len"])
    manifest["size_bytes"] / 1e6
    manifest.get("add_bos", False)
    set(manifest.get("eos_ids") or [])
    if "checkpoint" in manifest:
        _swallow(_source_of, manifest)
    if (manifest.get("tokenizer_source") or {}).get("kind") == "option":
        str(manifest["tokenizer_source"]["option"])
    if manifest.get("quant") is not None:
        str(manifest["quant"])
    for name in manifest.get("model_files", ()):
        Path(folder) / name
    units = (manifest.get("export") or {}).get("recommended_compute_units")
    assert units is None or isinstance(units, str)
    assert isinstance(manifest.get("validation", {}), dict)
    template = manifest.get("chat_template")
    assert template is None or isinstance(template, str)


def run_config(data: bytes, ws: Workspace) -> None:
    """A checkpoint's config.json: read_config, then spec_from_config (size sanity, family lookup,
    the family's own reading, DecoderSpec's checks); an accepted spec must be well-typed."""
    from mobilekit import checkpoint

    folder = ws.scratch("config")
    (folder / "config.json").write_bytes(data)
    config = _swallow(checkpoint.read_config, folder)
    if config is None:
        return
    spec = _swallow(checkpoint.spec_from_config, config, folder / "config.json")
    if spec is not None:
        check_spec(spec)


def check_spec(spec) -> None:
    """Every field of an accepted DecoderSpec has the type the modeling code assumes (a
    string rms_norm_eps accepted here would fail later, deep inside an export)."""
    from mobilekit.modeling.spec import DecoderSpec

    problems = []
    for f in dataclasses.fields(DecoderSpec):
        value, kind = getattr(spec, f.name), str(f.type)
        real = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind == "float" and not (real and math.isfinite(value)):
            problems.append(f.name)
        elif kind == "float | None" and value is not None and not (real and math.isfinite(value)):
            problems.append(f.name)
        elif kind == "bool" and not isinstance(value, bool):
            problems.append(f.name)
        elif kind == "int | None" and value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                                               or value < 0):
            problems.append(f.name)
        elif kind == "str" and not isinstance(value, str):
            problems.append(f.name)
        elif kind.startswith("tuple") and not isinstance(value, tuple):
            problems.append(f.name)
    if spec.sliding_window is not None and spec.sliding_window < 1:
        problems.append("sliding_window")
    assert not problems, f"spec_from_config accepted a spec with ill-typed fields {problems}: {spec}"


def run_safetensors(data: bytes, ws: Workspace) -> None:
    """A *.safetensors file's header."""
    from mobilekit import checkpoint

    folder = ws.scratch("safetensors")
    (folder / "model.safetensors").write_bytes(data)
    _swallow(checkpoint.safetensors_header, folder / "model.safetensors")


def run_weights(data: bytes, ws: Workspace) -> None:
    """model.safetensors of a micro Llama checkpoint: check_weights (headers vs config.json),
    then, where it passes, build_decoder (the tensor data itself)."""
    from mobilekit import checkpoint

    folder = ws.scratch("weights")
    shutil.copy(ws.micro_checkpoint / "config.json", folder / "config.json")
    (folder / "model.safetensors").write_bytes(data)
    ckpt = checkpoint.Checkpoint(path=folder)
    try:
        ckpt.check_weights()
    except MobilekitError:
        return
    _swallow(ckpt.build_decoder)


def run_pickle(data: bytes, ws: Workspace) -> None:
    """pytorch_model.bin: load_pickled_weights (plain and memory-mapped) and check_weights of a
    folder holding it; a pickle that would run code must be refused, never run."""
    from mobilekit import checkpoint

    folder = ws.scratch("pickle")
    shutil.copy(ws.micro_checkpoint / "config.json", folder / "config.json")
    path = folder / "pytorch_model.bin"
    path.write_bytes(data)
    PICKLE_MARKER.unlink(missing_ok=True)
    try:
        _swallow(checkpoint.load_pickled_weights, path)
        _swallow(checkpoint.load_pickled_weights, path, mmap=True)
        _swallow(checkpoint.Checkpoint(path=folder).check_weights)
    finally:
        ran = PICKLE_MARKER.exists()
        PICKLE_MARKER.unlink(missing_ok=True)
    assert not ran, "loading pytorch_model.bin ran code from the pickle"


def run_gguf(data: bytes, ws: Workspace) -> None:
    """A GGUF file's header (general.architecture)."""
    from mobilekit import checkpoint

    folder = ws.scratch("gguf")
    (folder / "model.gguf").write_bytes(data)
    _swallow(checkpoint.gguf_header, folder / "model.gguf")


def run_tokenizer(data: bytes, ws: Workspace) -> None:
    """The first byte picks the tokenizer file (tokenizer.json, tokenizer_config.json,
    special_tokens_map.json) the rest replaces; then load_tokenizer with that folder as a
    --tokenizer of the tiny Llama (so the foreign-tokenizer checks run too)."""
    from mobilekit import checkpoint

    if not data:
        return
    base = ws.tokenizer_checkpoint
    folder = ws.scratch("tokenizer")
    for name in TOKENIZER_FILES:
        shutil.copy(base / name, folder / name)
    (folder / TOKENIZER_FILES[data[0] % len(TOKENIZER_FILES)]).write_bytes(data[1:])
    ckpt = checkpoint.Checkpoint(path=base, tokenizer_path=folder, tokenizer_source={"kind": "option"})
    _swallow(ckpt.load_tokenizer)


def run_source(data: bytes, ws: Workspace) -> None:
    """The --checkpoint string (resolve) and the --tokenizer string (choose_tokenizer), with the
    working directory and mobilekit's cache in a scratch folder."""
    from mobilekit import checkpoint

    text = data.decode("utf-8", "replace")
    if text == checkpoint.EMBEDDED:  # the real SmolLM2 GGUF: valid, and slow to dequantize
        return
    folder = ws.scratch("source")
    with _cwd_and_cache(folder):
        _swallow(checkpoint.resolve, text)
        _swallow(checkpoint.Checkpoint(path=ws.tokenizer_checkpoint).choose_tokenizer, text)


@contextlib.contextmanager
def _cwd_and_cache(folder: Path):
    old_cwd, old_cache = os.getcwd(), os.environ.get("MOBILEKIT_CACHE")
    os.chdir(folder)
    os.environ["MOBILEKIT_CACHE"] = str(folder / "cache")
    try:
        yield
    finally:
        os.chdir(old_cwd)
        if old_cache is None:
            os.environ.pop("MOBILEKIT_CACHE", None)
        else:
            os.environ["MOBILEKIT_CACHE"] = old_cache


# --- seeds --------------------------------------------------------------------------------
# Named inputs; a name starting with "refused-" is an input the parser must refuse (with a
# MobilekitError), every other seed is valid and must be accepted whole.


def recipe_seeds(ws: Workspace) -> dict[str, bytes]:
    from importlib import resources

    folder = resources.files("mobilekit") / "recipes"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir(), key=lambda p: p.name)
            if p.name.endswith(".toml")}


def manifest_seeds(ws: Workspace) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(SEED_DIR.glob("manifest-*.json"))}


def config_documents() -> dict[str, dict]:
    """name -> a valid config.json: every family's tiny config, every recipe's stored [config]
    and its tiny-sized copy."""
    from mobilekit import recipes
    from mobilekit import families
    from mobilekit.tiny import recipe_tiny_config

    docs = {f"tiny-{name}": dict(families.get(name).tiny_config) for name in families.names()}
    for recipe in recipes.all_recipes():
        if recipe.config:
            docs[f"recipe-{recipe.id}"] = dict(recipe.config)
            docs[f"recipe-tiny-{recipe.id}"] = recipe_tiny_config(recipe)
    return docs


def config_seeds(ws: Workspace) -> dict[str, bytes]:
    return {f"{name}.json": json.dumps(doc, indent=1).encode() for name, doc in config_documents().items()}


def safetensors_seeds(ws: Workspace) -> dict[str, bytes]:
    return {"micro-llama.safetensors": (ws.micro_checkpoint / "model.safetensors").read_bytes()}


def pickle_seeds(ws: Workspace) -> dict[str, bytes]:
    import torch
    from safetensors.torch import load_file

    state = load_file(ws.micro_checkpoint / "model.safetensors")
    zipped, legacy = io.BytesIO(), io.BytesIO()
    torch.save(state, zipped)
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    return {"micro-llama-zip.bin": zipped.getvalue(), "micro-llama-legacy.bin": legacy.getvalue(),
            "refused-code.bin": pickle.dumps({"model.embed_tokens.weight": _RunsCode()}, protocol=2)}


def gguf_seeds(ws: Workspace) -> dict[str, bytes]:
    return {"llama.gguf": ws.gguf_seed}


def tokenizer_seeds(ws: Workspace) -> dict[str, bytes]:
    base = ws.tokenizer_checkpoint
    return {f"{i}-{name}": bytes([i]) + (base / name).read_bytes() for i, name in enumerate(TOKENIZER_FILES)}


def source_seeds(ws: Workspace) -> dict[str, bytes]:
    # valid = resolves: a local folder (made relative to the scratch cwd, "..") is the only
    # source that resolves offline, so the seeds are refused ones that reach each branch.
    return {"refused-hub-id": b"owner/name@0123abc", "refused-gguf": b"model.gguf",
            "refused-folder": b"..", "refused-text": b"not a checkpoint", "refused-home": b"~/missing"}


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes, Workspace], None]
    seeds: Callable[[Workspace], dict[str, bytes]]
    doc: str


TARGETS = {t.name: t for t in (
    Target("recipe", run_recipe, recipe_seeds, "recipe TOML text (recipes.parse, Recipe.spec)"),
    Target("manifest", run_manifest, manifest_seeds, "mobilekit.json (bundle.read_manifest + readers)"),
    Target("config", run_config, config_seeds, "config.json (read_config + spec_from_config), all families"),
    Target("safetensors", run_safetensors, safetensors_seeds, "safetensors header (safetensors_header)"),
    Target("weights", run_weights, safetensors_seeds, "safetensors vs config.json (check_weights, build_decoder)"),
    Target("pickle", run_pickle, pickle_seeds, "pytorch_model.bin (load_pickled_weights, check_weights)"),
    Target("gguf", run_gguf, gguf_seeds, "GGUF header (gguf_header)"),
    Target("tokenizer", run_tokenizer, tokenizer_seeds, "tokenizer files (Checkpoint.load_tokenizer)"),
    Target("source", run_source, source_seeds, "--checkpoint / --tokenizer strings (resolve, choose_tokenizer)"),
)}


def accepts(name: str, data: bytes, ws: Workspace) -> bool:
    """Whether target `name`'s parser accepts `data` whole (for the seed checks); raises what
    the parser raises other than a MobilekitError."""
    from mobilekit import bundle, checkpoint, recipes

    folder = ws.scratch(f"accepts-{name}")
    try:
        if name == "recipe":
            recipe = recipes.parse("seed", data.decode())
            recipe.config and recipe.spec()
        elif name == "manifest":
            (folder / "mobilekit.json").write_bytes(data)
            bundle.read_manifest(folder)
        elif name == "config":
            (folder / "config.json").write_bytes(data)
            checkpoint.spec_from_config(checkpoint.read_config(folder), folder / "config.json")
        elif name in ("safetensors", "weights"):
            shutil.copy(ws.micro_checkpoint / "config.json", folder / "config.json")
            (folder / "model.safetensors").write_bytes(data)
            checkpoint.Checkpoint(path=folder).check_weights()
        elif name == "pickle":
            shutil.copy(ws.micro_checkpoint / "config.json", folder / "config.json")
            (folder / "pytorch_model.bin").write_bytes(data)
            checkpoint.load_pickled_weights(folder / "pytorch_model.bin")
            checkpoint.Checkpoint(path=folder).check_weights()
        elif name == "gguf":
            (folder / "model.gguf").write_bytes(data)
            return checkpoint.gguf_header(folder / "model.gguf").architecture == "llama"
        elif name == "tokenizer":
            for n in TOKENIZER_FILES:
                shutil.copy(ws.tokenizer_checkpoint / n, folder / n)
            (folder / TOKENIZER_FILES[data[0] % len(TOKENIZER_FILES)]).write_bytes(data[1:])
            checkpoint.Checkpoint(path=ws.tokenizer_checkpoint, tokenizer_path=folder).load_tokenizer()
        elif name == "source":
            with _cwd_and_cache(folder):
                checkpoint.resolve(data.decode())
        return True
    except MobilekitError:
        return False
