"""The bad-input and interruption catalogue, through the real CLI in a subprocess.

Every case asserts: the documented exit code, a message that names the culprit (file, key,
option or process) and no Python traceback, nothing at the output path (no bundle, no
staging folder, no lock file), and that no code shipped in a checkpoint ran: every broken
checkpoint here carries a modeling_*.py (named by config.json's auto_map) and the pickles a
payload, each of which would create SENTINEL if it were ever executed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from mobilekit import families
from mobilekit.tiny import TINY_LLAMA, make_tiny_checkpoint

MOBILEKIT = str(Path(sys.executable).parent / "mobilekit")
SEQ = 64  # the context of the catalogue's bundle


@pytest.fixture(scope="session")
def sentinel(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sentinel") / "checkpoint-code-ran"


@pytest.fixture(scope="session")
def good_checkpoint(tmp_path_factory, sentinel) -> Path:
    """The tiny Llama checkpoint that exports fine, with remote code that must never run."""
    folder = make_tiny_checkpoint(tmp_path_factory.mktemp("catalogue") / "good", TINY_LLAMA)
    (folder / "modeling_evil.py").write_text(f"open({str(sentinel)!r}, 'w').write('ran')\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


@pytest.fixture(scope="session")
def good_bundle(tmp_path_factory, good_checkpoint) -> Path:
    """An ONNX fp32 bundle of the tiny model (seconds to export), for the bundle cases."""
    out = tmp_path_factory.mktemp("catalogue-bundle") / "bundle"
    result = mobilekit("export", "--checkpoint", str(good_checkpoint), "--target", "onnx", "--quant", "fp32",
                       "--max-seq-len", str(SEQ), "--output", str(out), "--no-validate")
    assert result.returncode == 0, result.stderr
    return out


def mobilekit(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 600):
    return subprocess.run([MOBILEKIT, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, stdin=subprocess.DEVNULL)


def start(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([MOBILEKIT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, stdin=subprocess.DEVNULL)


def assert_clean(code: int, stdout: str, stderr: str, expect_code: int, names: list[str], output: Path | None,
                 sentinel: Path):
    shown = f"exit {code}\nstdout:\n{stdout[-2000:]}\nstderr:\n{stderr[-3000:]}"
    assert code == expect_code, shown
    assert "Traceback" not in stdout + stderr, shown
    for name in names:
        assert name in stderr, f"{name!r} not named\n{shown}"
    if output is not None:
        assert not output.exists(), f"{output} was left behind\n{shown}"
        leftovers = [p.name for p in output.parent.glob(f".{output.name}*")]
        assert not leftovers, f"left beside the output: {leftovers}\n{shown}"
    assert not sentinel.exists(), "code shipped in the checkpoint ran"


def export_args(checkpoint: Path, output: Path, *extra: str) -> list[str]:
    return ["export", "--checkpoint", str(checkpoint), "--target", "onnx", "--quant", "fp32",
            "--max-seq-len", str(SEQ), "--output", str(output), *extra]


# --- broken checkpoints: each a copy of the good one, changed in one way ------------------


def edit_config(**changes) -> Callable[[Path], str]:
    def apply(folder: Path) -> str:
        config = json.loads((folder / "config.json").read_text())
        for key, value in changes.items():
            if value is DROP:
                config.pop(key)
            else:
                config[key] = value
        (folder / "config.json").write_text(json.dumps(config))
        return "config.json"

    return apply


DROP = object()


def write(name: str, data: bytes | str) -> Callable[[Path], str]:
    def apply(folder: Path) -> str:
        (folder / name).write_bytes(data if isinstance(data, bytes) else data.encode())
        return name

    return apply


def truncate_weights(folder: Path) -> str:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "model.safetensors"


def header_claims_2_62(folder: Path) -> str:
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes((1 << 62).to_bytes(8, "little") + data[8:])
    return "model.safetensors"


def no_weights(folder: Path) -> str:
    (folder / "model.safetensors").unlink()
    return "no weights"


def weights_from_another_config(folder: Path) -> str:
    """Weights of a model with a larger vocabulary and MLP than config.json says."""
    other = make_tiny_checkpoint(folder.parent / (folder.name + "-other"),
                                 {**TINY_LLAMA, "vocab_size": 640, "intermediate_size": 96}, tokenizer=False)
    shutil.copy(other / "model.safetensors", folder / "model.safetensors")
    shutil.rmtree(other)
    return "config.json implies"


def drop_a_weight(folder: Path) -> str:
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    del state["model.layers.1.self_attn.k_proj.weight"]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return "layers.1.attention.k_proj.weight"


def add_a_weight(folder: Path) -> str:
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    state["model.layers.0.mlp.extra_proj.weight"] = torch.zeros(4, 4)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return "model.layers.0.mlp.extra_proj.weight"


def integer_weights(folder: Path) -> str:
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    state["model.norm.weight"] = state["model.norm.weight"].to(torch.int32)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return "model.norm.weight"


def pickle_with_code(sentinel: Path) -> Callable[[Path], str]:
    """A pytorch_model.bin whose unpickling would run `touch SENTINEL`: the classic
    malicious checkpoint. torch.load(weights_only=True) refuses it; nothing may run."""

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {sentinel}",))

    def apply(folder: Path) -> str:
        import torch

        (folder / "model.safetensors").unlink()
        torch.save({"model.embed_tokens.weight": Payload()}, folder / "pytorch_model.bin")
        return "pytorch_model.bin"

    return apply


def bin_of_random_bytes(folder: Path) -> str:
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(os.urandom(4096))
    return "pytorch_model.bin"


def no_tokenizer(folder: Path) -> str:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    return "has no tokenizer"


def tokenizer_with_wrong_structure(folder: Path) -> str:
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "NoSuchModel"}}))
    return "tokenizer"


@dataclass
class CheckpointCase:
    id: str
    breaks: Callable[[Path], str] | None  # returns a text the message must contain
    expect: int = 1
    extra: tuple[str, ...] = ()
    names: list[str] = field(default_factory=list)


CHECKPOINT_CASES = [
    CheckpointCase("config-not-json", write("config.json", '{"model_type": "llama",'), names=["not valid JSON"]),
    CheckpointCase("config-a-list", write("config.json", "[1, 2, 3]"), names=["JSON object"]),
    CheckpointCase("config-binary", write("config.json", b"\xff\xfe\x00garbage"), names=["not valid JSON"]),
    CheckpointCase("config-negative-layers", edit_config(num_hidden_layers=-2), names=["num_hidden_layers = -2"]),
    CheckpointCase("config-zero-heads", edit_config(num_attention_heads=0), names=["num_attention_heads = 0"]),
    CheckpointCase("config-layers-as-text", edit_config(num_hidden_layers="2"), names=["num_hidden_layers = '2'"]),
    CheckpointCase("config-heads-not-divisible", edit_config(num_key_value_heads=3),
                   names=["must be a multiple of num_kv_heads"]),
    CheckpointCase("config-missing-key", edit_config(hidden_size=DROP), names=["hidden_size"]),
    CheckpointCase("config-unknown-architecture", edit_config(architectures=["BertForMaskedLM"]),
                   names=["BertForMaskedLM", "Supported:"]),
    CheckpointCase("config-architectures-a-string", edit_config(architectures="LlamaForCausalLM"),
                   names=["architectures must be a list"]),
    CheckpointCase("config-rope-scaling-unknown",
                   edit_config(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}),
                   names=["yarn"]),
    CheckpointCase("config-prequantized", edit_config(quantization_config={"quant_method": "gptq"}),
                   names=["gptq", "floating-point weights"]),
    CheckpointCase("config-activation-unknown", edit_config(hidden_act="relu2"), names=["relu2"]),
    CheckpointCase("safetensors-random-bytes", write("model.safetensors", os.urandom(2048)),
                   names=["model.safetensors", "re-download"]),
    CheckpointCase("safetensors-truncated", truncate_weights, names=["model.safetensors"]),
    CheckpointCase("safetensors-header-2-62", header_claims_2_62, names=["4611686018427387904-byte header"]),
    CheckpointCase("safetensors-empty-file", write("model.safetensors", b""), names=["model.safetensors"]),
    CheckpointCase("no-weights", no_weights, names=["has no weights", "model.safetensors"]),
    CheckpointCase("weights-shapes-disagree", weights_from_another_config,
                   names=["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight", "[640, 64]"]),
    CheckpointCase("weights-missing-tensor", drop_a_weight, names=["missing 1 weight"]),
    CheckpointCase("weights-unexpected-tensor", add_a_weight, names=["not a weight of this architecture"]),
    CheckpointCase("weights-integer-dtype", integer_weights, names=["not floating point"]),
    CheckpointCase("bin-random-bytes", bin_of_random_bytes, names=["not a readable PyTorch weights file"]),
    CheckpointCase("tokenizer-json-corrupt", write("tokenizer.json", '{"version": "1.0", "model": '),
                   names=["tokenizer.json", "not valid JSON"]),
    CheckpointCase("tokenizer-json-wrong-structure", tokenizer_with_wrong_structure,
                   names=["cannot be loaded", "--tokenizer"]),
    CheckpointCase("tokenizer-config-corrupt", write("tokenizer_config.json", "{{{"),
                   names=["tokenizer_config.json"]),
    CheckpointCase("no-tokenizer", no_tokenizer, names=["--tokenizer"]),
    CheckpointCase("context-beyond-the-model", None, extra=("--max-seq-len", "100000"),
                   names=["--max-seq-len", "256 tokens"]),
    CheckpointCase("context-too-short", None, extra=("--max-seq-len", "8"), names=["--max-seq-len 8"]),
]


@pytest.mark.parametrize("case", CHECKPOINT_CASES, ids=lambda c: c.id)
def test_broken_checkpoint(case, good_checkpoint, sentinel, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(good_checkpoint, folder)
    culprit = case.breaks(folder) if case.breaks else None
    output = tmp_path / "out" / "bundle"
    args = export_args(folder, output)
    if case.extra:
        args = [a for a in args if a not in ("--max-seq-len", str(SEQ))] + list(case.extra)
    result = mobilekit(*args)
    assert_clean(result.returncode, result.stdout, result.stderr, case.expect,
                 [c for c in [culprit] if c] + case.names, output, sentinel)
    assert not (tmp_path / "out").exists(), "the output's parent folder, made for the export, was left behind"


# Config errors only the newer families can make: each from a tiny checkpoint of that family.
FAMILY_CONFIG_CASES = [
    ("lfm2-unknown-layer-type", "lfm2", {"layer_types": ["conv", "linear_attention", "conv"]},
     ["linear_attention", "layer_types"]),
    ("smollm3-no-rope-layers-short", "smollm3", {"no_rope_layers": [1, 0]}, ["no_rope_layers has 2 entries"]),
    # layer 1 (full attention) would share keys and values, but no earlier layer is full
    ("gemma3n-shared-kv-without-source", "gemma3n", {"num_kv_shared_layers": 4},
     ["layer 1 shares keys and values", "kv_shared_layers 4"]),
    ("gemma3n-altup-active-out-of-range", "gemma3n", {"altup_active_idx": 7},
     ["altup_active (7) must be below altup_inputs (4)"]),
]


@pytest.mark.parametrize("case_id, family, change, names", FAMILY_CONFIG_CASES, ids=[c[0] for c in FAMILY_CONFIG_CASES])
def test_family_config_error(case_id, family, change, names, sentinel, tmp_path):
    folder = make_tiny_checkpoint(tmp_path / "ckpt", families.get(family).tiny_config)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    output = tmp_path / "out" / "bundle"
    result = mobilekit(*export_args(folder, output))
    assert_clean(result.returncode, result.stdout, result.stderr, 1, names, output, sentinel)
    assert not (tmp_path / "out").exists()


def test_pickle_with_code_is_refused_and_never_runs(good_checkpoint, sentinel, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(good_checkpoint, folder)
    pickle_with_code(sentinel)(folder)
    output = tmp_path / "bundle"
    result = mobilekit(*export_args(folder, output))
    assert_clean(result.returncode, result.stdout, result.stderr, 1,
                 ["pytorch_model.bin", "was refused", "never runs code"], output, sentinel)


def gguf_bytes(array_count: int | None = None) -> bytes:
    """A GGUF header naming architecture llama; with `array_count`, an array entry whose
    count claims far more entries than the file holds."""
    import struct

    def string(text: str) -> bytes:
        return struct.pack("<Q", len(text)) + text.encode()

    entries = [string("general.architecture") + struct.pack("<I", 8) + string("llama")]
    if array_count is not None:
        entries.append(string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, array_count) + string("a"))
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(entries)) + b"".join(entries)


@pytest.mark.parametrize("case_id, data, culprit", [
    ("gguf-random-bytes", os.urandom(4096), "GGUF magic"),
    ("gguf-array-claims-2-40-entries", gguf_bytes(1 << 40), "claims 1099511627776 entries"),
    ("gguf-header-without-tensors", gguf_bytes(), "model.gguf"),
])
def test_broken_gguf(case_id, data, culprit, sentinel, tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(data)
    output = tmp_path / "bundle"
    result = mobilekit("export", "--checkpoint", str(path), "--target", "onnx", "--output", str(output),
                       env={"MOBILEKIT_CACHE": str(tmp_path / "cache")}, timeout=300)
    assert_clean(result.returncode, result.stdout, result.stderr, 1, ["model.gguf", culprit], output, sentinel)


def test_gguf_whose_tensors_do_not_fit_its_metadata(sentinel, tmp_path):
    """A Qwen3 GGUF without attention.key_length: transformers would build the default head
    width (128), re-initialize the 32-wide attention tensors at random with a warning, and the
    export would carry random weights. It is refused instead, naming the file and the tensors."""
    from gguf_helpers import write_gguf

    hf_folder = make_tiny_checkpoint(tmp_path / "hf", families.get("qwen3").tiny_config)
    path = tmp_path / "model.gguf"
    write_gguf(hf_folder, path, "qwen3", key_length=False)
    output = tmp_path / "bundle"
    result = mobilekit("export", "--checkpoint", str(path), "--target", "onnx", "--output", str(output),
                       env={"MOBILEKIT_CACHE": str(tmp_path / "cache")}, timeout=300)
    assert_clean(result.returncode, result.stdout, result.stderr, 1,
                 ["model.gguf", "k_proj.weight", "have other shapes", "re-download"], output, sentinel)
    assert not list((tmp_path / "cache" / "gguf").glob("*/config.json")), "a cache entry was left behind"


def test_the_good_checkpoint_exports_and_its_code_never_runs(good_bundle, sentinel):
    """The control: the same checkpoint, unbroken, exports (and its modeling_*.py never runs)."""
    assert (good_bundle / "model.onnx").is_file()
    assert not sentinel.exists()


# --- sources, options, output paths --------------------------------------------------------

OPTION_CASES = [
    ("unknown-recipe", ["export", "gpt5", "--target", "onnx"], 1, ["Unknown recipe 'gpt5'"]),
    ("unknown-target", ["export", "smollm2-135m", "--target", "onx"], 2, ["'onx' is not one of"]),
    ("unknown-quant", ["export", "smollm2-135m", "--target", "onnx", "--quant", "int3"], 2, ["'int3' is not one of"]),
    ("scheme-the-target-lacks", ["export", "smollm2-135m", "--target", "executorch", "--quant", "fp16"], 1,
     ["does not offer quant scheme 'fp16'"]),
    ("no-recipe-no-checkpoint", ["export", "--target", "onnx"], 2, ["give RECIPE_ID, or --checkpoint"]),
    ("checkpoint-path-missing", ["export", "--checkpoint", "/nonexistent/model", "--target", "onnx"], 1,
     ["'/nonexistent/model' does not exist"]),
    ("checkpoint-gguf-missing", ["export", "--checkpoint", "/nonexistent/m.gguf", "--target", "onnx"], 1,
     ["/nonexistent/m.gguf does not exist"]),
    ("checkpoint-hub-offline", ["export", "--checkpoint", "someone/some-model@main", "--target", "onnx"], 1,
     ["could not fetch someone/some-model@main", "--checkpoint PATH"]),
    ("checkpoint-bad-source-string", ["export", "--checkpoint", "a/b/c@@", "--target", "onnx"], 1,
     ["'a/b/c@@' does not exist"]),
    ("recipe-hub-offline", ["export", "tinyllama-1.1b-chat", "--target", "onnx"], 1,
     ["could not fetch TinyLlama/TinyLlama-1.1B-Chat-v1.0"]),
    ("max-seq-len-not-a-number", ["export", "smollm2-135m", "--target", "onnx", "--max-seq-len", "lots"], 2,
     ["'lots' is not a valid integer"]),
    ("goal-without-auto", ["export", "smollm2-135m", "--target", "onnx", "--max-size", "90MB"], 2,
     ["--max-size and --max-ppl-increase", "--quant auto"]),
    ("max-size-not-a-size", ["export", "smollm2-135m", "--target", "onnx", "--quant", "auto", "--max-size", "big"],
     1, ["--max-size 'big' is not a size"]),
    ("max-ppl-increase-negative", ["export", "smollm2-135m", "--target", "onnx", "--quant", "auto",
                                   "--max-ppl-increase", "-3"], 2, ["--max-ppl-increase -3"]),
    ("scheme-a-target-does-not-offer", ["export", "smollm2-135m", "--target", "executorch", "--quant", "fp16"], 1,
     ["does not offer quant scheme 'fp16'"]),
    ("info-unknown-recipe", ["info", "nope"], 1, ["Unknown recipe 'nope'"]),
    ("matrix-bad-shard", ["matrix", "--shard", "3/2", "--list"], 1, ["--shard"]),
]


@pytest.mark.parametrize("case_id, args, code, names", OPTION_CASES, ids=[c[0] for c in OPTION_CASES])
def test_bad_option(case_id, args, code, names, sentinel, tmp_path):
    output = tmp_path / "bundle"
    if args[0] == "export":
        args = [*args, "--output", str(output)]
    result = mobilekit(*args, cwd=tmp_path)
    assert_clean(result.returncode, result.stdout, result.stderr, code, names, output, sentinel)
    assert not (tmp_path / "out").exists()


def test_auto_without_a_goal(good_checkpoint, sentinel, tmp_path):
    # A checkpoint folder has no recipe, so no [auto_goal] fills the goal in (smollm2-135m's recipe would).
    output = tmp_path / "bundle"
    result = mobilekit("export", "--checkpoint", str(good_checkpoint), "--target", "onnx", "--quant", "auto",
                       "--output", str(output), cwd=tmp_path)
    assert_clean(result.returncode, result.stdout, result.stderr, 2, ["--quant auto needs a goal", "--max-size"],
                 output, sentinel)


def test_max_size_below_the_smallest_plan(good_checkpoint, sentinel, tmp_path):
    output = tmp_path / "bundle"
    result = mobilekit("export", "--checkpoint", str(good_checkpoint), "--target", "executorch", "--quant", "auto",
                       "--max-size", "1KB", "--max-seq-len", str(SEQ), "--output", str(output), cwd=tmp_path)
    assert_clean(result.returncode, result.stdout, result.stderr, 1, ["--max-size 0.0MB", "smallest mixed plan"],
                 output, sentinel)


def test_output_under_a_regular_file(good_checkpoint, sentinel, tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    output = tmp_path / "afile" / "sub" / "bundle"
    result = mobilekit(*export_args(good_checkpoint, output))
    assert_clean(result.returncode, result.stdout, result.stderr, 1, [f"{tmp_path / 'afile'} is a file"], None,
                 sentinel)
    assert (tmp_path / "afile").read_text() == "not a folder"


def test_output_folder_that_cannot_be_created(good_checkpoint, sentinel, tmp_path):
    output = Path("/proc/mobilekit-cannot-write-here/bundle")
    result = mobilekit(*export_args(good_checkpoint, output))
    assert_clean(result.returncode, result.stdout, result.stderr, 1, ["cannot create the folder /proc/"], output,
                 sentinel)


def test_output_that_exists(good_checkpoint, sentinel, tmp_path):
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "mine.txt").write_text("keep me")
    result = mobilekit(*export_args(good_checkpoint, tmp_path / "bundle"))
    assert_clean(result.returncode, result.stdout, result.stderr, 1, ["already exists"], None, sentinel)
    assert (tmp_path / "bundle" / "mine.txt").read_text() == "keep me"


def test_tokenizer_option_without_tokenizer(good_checkpoint, sentinel, tmp_path):
    (tmp_path / "empty").mkdir()
    output = tmp_path / "bundle"
    result = mobilekit(*export_args(good_checkpoint, output, "--tokenizer", str(tmp_path / "empty")))
    assert_clean(result.returncode, result.stdout, result.stderr, 1, [f"--tokenizer {tmp_path / 'empty'}"], output,
                 sentinel)


# --- bundles ------------------------------------------------------------------------------


def copy_bundle(good_bundle: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "bundle"
    shutil.copytree(good_bundle, folder)
    return folder


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def damage_manifest(change: Callable[[dict], None]) -> Callable[[Path], str]:
    def apply(folder: Path) -> str:
        manifest = json.loads((folder / "mobilekit.json").read_text())
        change(manifest)
        (folder / "mobilekit.json").write_text(json.dumps(manifest))
        return "mobilekit.json"

    return apply


BUNDLE_CASES = [
    ("manifest-missing", lambda f: (f / "mobilekit.json").unlink() or "mobilekit.json is missing"),
    ("manifest-not-json", write("mobilekit.json", "{ nope")),
    ("manifest-schema-version", damage_manifest(lambda m: m.update(schema_version=99))),
    ("manifest-target-missing", damage_manifest(lambda m: m.pop("target"))),
    ("manifest-unknown-target", damage_manifest(lambda m: m.update(target="tflite"))),
    ("manifest-context-a-string", damage_manifest(lambda m: m.update(max_seq_len="64"))),
    ("chat-template-broken", damage_manifest(lambda m: m.update(chat_template="{% if %}"))),
    # the conv state's fields (issue 15): a kernel under 2 has no state to carry
    ("manifest-conv-kernel-1", damage_manifest(lambda m: m["decoder_spec"].update(conv_kernel=1))),
    ("model-file-missing", lambda f: (f / "model.onnx").unlink() or "model.onnx is missing"),
    ("model-file-truncated", lambda f: f.joinpath("model.onnx").write_bytes(b"\x08\x01") and "model.onnx"),
]


@pytest.mark.parametrize("case_id, breaks", BUNDLE_CASES, ids=[c[0] for c in BUNDLE_CASES])
@pytest.mark.parametrize("command", ["generate", "bench"])
def test_broken_bundle(case_id, breaks, command, good_bundle, sentinel, tmp_path):
    folder = copy_bundle(good_bundle, tmp_path)
    culprit = breaks(folder)
    before = snapshot(folder)
    args = ["generate", str(folder), "Hello"] if command == "generate" else ["bench", str(folder), "--new-tokens", "4"]
    result = mobilekit(*args)
    assert_clean(result.returncode, result.stdout, result.stderr, 1, [culprit], None, sentinel)
    assert snapshot(folder) == before, f"{command} changed the bundle"


def test_validate_report_into_a_missing_folder(good_bundle, good_checkpoint, sentinel, tmp_path):
    report = tmp_path / "no" / "such" / "report.json"
    result = mobilekit("validate", str(good_bundle), "--checkpoint", str(good_checkpoint), "--report", str(report))
    assert_clean(result.returncode, result.stdout, result.stderr, 1, [str(report.parent), "does not exist"], None,
                 sentinel)


def test_validate_a_damaged_bundle(good_bundle, sentinel, tmp_path):
    folder = copy_bundle(good_bundle, tmp_path)
    data = bytearray((folder / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (folder / "model.onnx").write_bytes(bytes(data))
    before = snapshot(folder)
    result = mobilekit("validate", str(folder))
    assert_clean(result.returncode, result.stdout, result.stderr, 1, ["model.onnx does not match its sha256"], None,
                 sentinel)
    assert snapshot(folder) == before


def test_validate_generate_and_bench_never_modify_a_bundle(good_bundle, good_checkpoint, sentinel, tmp_path):
    folder = copy_bundle(good_bundle, tmp_path)
    before = snapshot(folder)
    report = tmp_path / "report.json"
    for args in (["validate", str(folder), "--checkpoint", str(good_checkpoint), "--report", str(report)],
                 ["generate", str(folder), "Hello", "--max-new-tokens", "4"],
                 ["bench", str(folder), "--new-tokens", "4"]):
        result = mobilekit(*args)
        assert result.returncode == 0, result.stderr
        assert snapshot(folder) == before, f"{args[0]} changed the bundle"
    assert json.loads(report.read_text())["stage2"]["metrics"]
    assert not sentinel.exists()


LONG_PROMPT = " ".join(["the quick brown fox jumps over the lazy dog"] * 30)


@pytest.mark.parametrize("command", ["generate", "bench"])
def test_prompt_longer_than_the_context(command, good_bundle, sentinel, tmp_path):
    folder = copy_bundle(good_bundle, tmp_path)
    if command == "generate":
        result = mobilekit("generate", str(folder), LONG_PROMPT, "--no-chat")
    else:  # bench's own prompt, in a bundle whose context is shorter than it
        damage_manifest(lambda m: m.update(max_seq_len=8))(folder)
        result = mobilekit("bench", str(folder))
    assert_clean(result.returncode, result.stdout, result.stderr, 1, ["the prompt is", "context is"], None, sentinel)
    if command == "generate":
        assert f"context is {SEQ} tokens" in result.stderr


def test_max_new_tokens_beyond_the_context_is_clamped(good_bundle, sentinel, tmp_path):
    result = mobilekit("generate", str(good_bundle), "Hello", "--no-chat", "--max-new-tokens", "5000")
    assert result.returncode == 0, result.stderr
    assert "--max-new-tokens 5000 clamped to" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("value", ["0", "-3"])
def test_max_new_tokens_must_be_positive(value, good_bundle, sentinel):
    result = mobilekit("generate", str(good_bundle), "Hello", "--max-new-tokens", value)
    assert_clean(result.returncode, result.stdout, result.stderr, 2, ["--max-new-tokens"], None, sentinel)


@pytest.mark.parametrize("value", ["enable_thinking", "=false"])
def test_template_variable_must_be_key_value(value, good_bundle, sentinel):
    result = mobilekit("generate", str(good_bundle), "Hello", "--template-var", value)
    assert_clean(result.returncode, result.stdout, result.stderr, 2, ["--template-var", "KEY=VALUE"], None, sentinel)


def test_not_a_bundle_folder(sentinel, tmp_path):
    result = mobilekit("generate", str(tmp_path), "Hello")
    assert_clean(result.returncode, result.stdout, result.stderr, 1, ["mobilekit.json is missing"], None, sentinel)


def test_bundle_path_missing(sentinel, tmp_path):
    result = mobilekit("generate", str(tmp_path / "nowhere"), "Hello")
    assert_clean(result.returncode, result.stdout, result.stderr, 2, ["does not exist"], None, sentinel)


# --- the environment: injected faults ------------------------------------------------------


def inject(tmp_path: Path, code: str) -> dict:
    """Environment for a child whose sitecustomize runs `code` first: how a fault of the
    machine (full disk, missing package, no memory) or a bug is brought about on purpose."""
    folder = tmp_path / "inject"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(textwrap.dedent(code))
    return {"PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]),
            "MOBILEKIT_CACHE": str(tmp_path / "cache")}


def test_disk_full_during_the_write(good_checkpoint, sentinel, tmp_path):
    env = inject(tmp_path, """
        import errno, os, shutil
        def copy2(src, dst, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        shutil.copy2 = copy2
    """)
    output = tmp_path / "bundle"
    result = mobilekit(*export_args(good_checkpoint, output, "--no-validate"), env=env)
    assert_clean(result.returncode, result.stdout, result.stderr, 1, ["no space left on the device", "tokenizer.json"],
                 output, sentinel)


def test_not_enough_free_disk_before_writing(good_checkpoint, sentinel, tmp_path):
    env = inject(tmp_path, """
        import collections, shutil
        Usage = collections.namedtuple("usage", "total used free")
        shutil.disk_usage = lambda path: Usage(10**9, 10**9 - 10**6, 10**6)
    """)
    output = tmp_path / "bundle"
    result = mobilekit(*export_args(good_checkpoint, output), env=env)
    assert_clean(result.returncode, result.stdout, result.stderr, 1, ["MB free", str(tmp_path)], output, sentinel)


def test_missing_runtime_package(good_bundle, sentinel, tmp_path):
    env = inject(tmp_path, """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "onnxruntime_genai":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, Block())
    """)
    result = mobilekit("generate", str(good_bundle), "Hello", env=env)
    assert_clean(result.returncode, result.stdout, result.stderr, 1, ["pip install"], None, sentinel)


def test_out_of_memory(good_bundle, sentinel, tmp_path):
    env = inject(tmp_path, """
        import mobilekit.chat
        def format_prompt(*args, **kwargs):
            raise MemoryError()
        mobilekit.chat.format_prompt = format_prompt
    """)
    result = mobilekit("generate", str(good_bundle), "Hello", env=env)
    assert_clean(result.returncode, result.stdout, result.stderr, 1, ["ran out of memory"], None, sentinel)


BUG = """
    import mobilekit.chat
    def format_prompt(*args, **kwargs):
        return {}["injected bug"]
    mobilekit.chat.format_prompt = format_prompt
"""


def test_a_bug_is_reported_as_a_bug(good_bundle, sentinel, tmp_path):
    env = inject(tmp_path, BUG)
    result = mobilekit("generate", str(good_bundle), "Hello", env=env)
    assert_clean(result.returncode, result.stdout, result.stderr, 70, ["Internal error", "a bug", "KeyError"], None,
                 sentinel)
    logs = list((tmp_path / "cache" / "logs").glob("crash-*.log"))
    assert len(logs) == 1 and str(logs[0]) in result.stderr
    assert "Traceback" in logs[0].read_text() and "injected bug" in logs[0].read_text()


@pytest.mark.parametrize("how", ["--debug", "MOBILEKIT_DEBUG=1"])
def test_debug_prints_the_traceback(how, good_bundle, tmp_path):
    env = inject(tmp_path, BUG)
    args = ["generate", str(good_bundle), "Hello"]
    if how == "--debug":
        args.insert(0, "--debug")
    else:
        env["MOBILEKIT_DEBUG"] = "1"
    result = mobilekit(*args, env=env)
    assert result.returncode == 70
    assert "Traceback" in result.stderr and "injected bug" in result.stderr


# --- interruptions and concurrency ----------------------------------------------------------


def wait_for_staging(output: Path, proc: subprocess.Popen, timeout: float = 300) -> Path:
    """The export's staging folder, once it exists (the lock is held from then on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in output.parent.glob(f".{output.name}.partial-*") if p.is_dir()]
        if found:
            return found[0]
        if proc.poll() is not None:
            pytest.fail(f"export ended (exit {proc.returncode}) before staging: {proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the export never started staging")


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "Interrupted"), (signal.SIGTERM, 143, "Terminated")])
def test_interrupted_export_leaves_nothing(sig, code, word, good_checkpoint, sentinel, tmp_path):
    output = tmp_path / "bundle"
    proc = start(*export_args(good_checkpoint, output))
    wait_for_staging(output, proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=300)
    assert_clean(proc.returncode, stdout, stderr, code, [word, "no bundle was written"], output, sentinel)
    assert len([line for line in stderr.splitlines() if word in line]) == 1


def test_an_interrupt_a_library_swallows_still_stops_the_export(good_checkpoint, sentinel, tmp_path):
    """A Ctrl-C that lands in code catching BaseException (as some loaders do) is raised
    again before the bundle would be renamed into place."""
    env = inject(tmp_path, """
        import os, signal
        import mobilekit.pipeline
        original = mobilekit.pipeline.Context.stage1
        def stage1(self, progress):
            try:
                os.kill(os.getpid(), signal.SIGINT)
            except BaseException:
                pass  # swallowed, as a careless library would
            return original(self, progress)
        mobilekit.pipeline.Context.stage1 = stage1
    """)
    output = tmp_path / "bundle"
    result = mobilekit(*export_args(good_checkpoint, output), env=env)
    assert_clean(result.returncode, result.stdout, result.stderr, 130, ["Interrupted", "no bundle was written"], output,
                 sentinel)


def test_second_export_into_the_same_output_fails_at_once(good_checkpoint, sentinel, tmp_path):
    output = tmp_path / "bundle"
    first = start(*export_args(good_checkpoint, output))
    try:
        wait_for_staging(output, first)
        first.send_signal(signal.SIGSTOP)  # holds the lock for as long as the second one runs
        result = mobilekit(*export_args(good_checkpoint, output), timeout=120)
        assert result.returncode == 1, result.stderr
        assert f"process {first.pid}" in result.stderr and "another mobilekit export is writing" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        first.send_signal(signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr  # the first export was not disturbed
    assert (output / "mobilekit.json").is_file()
    assert not list(tmp_path.glob(".bundle*"))
    assert not sentinel.exists()


def test_killed_export_leaves_no_bundle_and_the_next_sweeps_it(good_checkpoint, sentinel, tmp_path):
    output = tmp_path / "bundle"
    proc = start(*export_args(good_checkpoint, output))
    staging = wait_for_staging(output, proc)
    proc.kill()  # SIGKILL: no clean-up runs
    proc.communicate(timeout=60)
    assert not output.exists() and staging.is_dir()
    result = mobilekit(*export_args(good_checkpoint, output, "--no-validate"))
    assert result.returncode == 0, result.stderr
    assert (output / "mobilekit.json").is_file()
    assert not staging.exists(), "the dead export's staging folder was not swept"
    assert not list(tmp_path.glob(".bundle*"))
    assert not sentinel.exists()


# `mobilekit push` (issue 20): the Hub offline, unreachable or refusing is a one-line error,
# exit 1, and the bundle is left as it was (its files still match their hashes).
@pytest.mark.parametrize("case", ["offline", "unreachable", "refused"])
def test_push_to_a_hub_that_cannot_take_it(case, good_bundle, sentinel):
    import http.server
    import threading

    from mobilekit import bundle

    class Refuses(http.server.BaseHTTPRequestHandler):
        def _refuse(self):
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_PUT = _refuse

        def log_message(self, *args):
            pass

    server = None
    env = {"HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_test", "HF_ENDPOINT": "http://127.0.0.1:9"}
    if case == "offline":
        env = {"HF_HUB_OFFLINE": "1"}
    elif case == "refused":
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuses)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{server.server_port}"
    try:
        result = mobilekit("push", str(good_bundle), "someone/tiny", env=env)
    finally:
        if server is not None:
            server.shutdown()
    names = {"offline": ["HF_HUB_OFFLINE"], "unreachable": ["cannot reach the Hugging Face Hub", "HF_ENDPOINT"],
             "refused": ["someone/tiny", "HTTP 401", "HF_TOKEN"]}[case]
    assert_clean(result.returncode, result.stdout, result.stderr, 1, names, None, sentinel)
    bundle.verify_files(good_bundle, bundle.read_manifest(good_bundle))
