"""`--checkpoint X.gguf` for the families whose GGUF transformers' loader reads (beyond the
embedded SmolLM2, a llama GGUF): a tiny random checkpoint is written as a GGUF the way
llama.cpp's converter lays one out (tests/gguf_helpers.py), then read back through
mobilekit, compared tensor by tensor, and exported."""

import json

import pytest
import torch
from click.testing import CliRunner

from mobilekit import checkpoint, families
from mobilekit.cli import main
from mobilekit.tiny import make_tiny_checkpoint
from gguf_helpers import write_gguf


# (GGUF architecture, family): the new families of 2026 whose GGUF transformers reads.
# Qwen3's head_dim (32 here, 128 in Qwen3-0.6B) is not hidden / heads: the GGUF carries it
# as attention.key_length, as llama.cpp writes it.
GGUF_FAMILIES = [("qwen3", "qwen3"), ("qwen2", "qwen2")]


@pytest.mark.parametrize("arch, family", GGUF_FAMILIES)
def test_gguf_checkpoint_reads_back_and_exports(arch, family, tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILEKIT_CACHE", str(tmp_path / "cache"))
    hf_folder = make_tiny_checkpoint(tmp_path / "hf", families.get(family).tiny_config)
    path = tmp_path / f"tiny-{arch}.gguf"
    state = write_gguf(hf_folder, path, arch)

    ckpt = checkpoint.resolve(str(path))
    assert ckpt.family.name == family
    assert ckpt.spec.head_dim == families.get(family).tiny_config.get(
        "head_dim", ckpt.spec.hidden_size // ckpt.spec.num_heads)
    from safetensors.torch import load_file

    read = load_file(ckpt.path / "model.safetensors")
    for name, tensor in state.items():
        if name in read:
            torch.testing.assert_close(read[name], tensor, rtol=0, atol=0, msg=name)
    assert "model.embed_tokens.weight" in read and len(read) >= len(state) - 1

    out = tmp_path / "bundle"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(path), "--target", "onnx", "--quant", "fp32",
                                       "--output", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "mobilekit.json").read_text())
    assert manifest["checkpoint"]["kind"] == "gguf" and manifest["family"] == family
    assert manifest["validation"]["passed"]
