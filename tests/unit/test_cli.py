import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from mobilekit.cli import main


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_list_shows_recipes_and_targets():
    result = run("list")
    assert result.exit_code == 0
    for word in ("smollm2-135m", "tinyllama-1.1b-chat", "mobilellama-1.4b-chat", "executorch", "onnx", "coreml"):
        assert word in result.output


def test_info_resolves_a_recipe():
    result = run("info", "smollm2-135m")
    assert result.exit_code == 0
    assert "HuggingFaceTB/SmolLM2-135M-Instruct@12fd25f" in result.output
    assert "embedded" in result.output and "executorch=fp32" in result.output
    assert "134.5M parameters, 30 layers, hidden 576" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["export", "gpt5", "--target", "executorch"], "Unknown recipe 'gpt5'. Available: "),
        (["export", "smollm2-135m", "--target", "onx"], "'onx' is not one of 'coreml', 'executorch', 'onnx', 'all'"),
        (["export", "smollm2-135m", "--target", "executorch", "--quant", "int3"], "'int3' is not one of"),
        (["export", "smollm2-135m", "--target", "executorch", "--quant", "fp16"],
         "does not offer quant scheme 'fp16'. It offers: fp32, int8, int4"),
        (["info", "nope"], "Unknown recipe 'nope'"),
    ],
)
def test_bad_names_list_the_valid_ones(args, message, tmp_path):
    result = run(*args, *(["--output", str(tmp_path / "b")] if args[0] == "export" else []))
    assert result.exit_code != 0
    assert message in result.output
    assert not (tmp_path / "b").exists()


def test_missing_checkpoint_path(tmp_path):
    result = run("export", "--checkpoint", str(tmp_path / "nowhere"), "--target", "executorch",
                 "--output", str(tmp_path / "b"))
    assert result.exit_code == 1
    assert "does not exist" in result.output
    assert not (tmp_path / "b").exists()


def test_corrupt_safetensors(tiny_llama_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama_dir, broken)
    (broken / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    result = run("export", "--checkpoint", str(broken), "--target", "executorch", "--quant", "fp32",
                 "--output", str(tmp_path / "b"), "--no-validate")
    assert result.exit_code == 1
    assert "is not a readable safetensors file" in result.output and "re-download" in result.output
    assert list(tmp_path.iterdir()) == [broken]


def test_gguf_of_unsupported_architecture(tmp_path):
    import gguf

    path = tmp_path / "bert.gguf"
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    result = run("export", "--checkpoint", str(path), "--target", "executorch", "--output", str(tmp_path / "b"))
    assert result.exit_code == 1
    assert "architecture 'bert', which mobilekit does not support" in result.output
    assert "llama" in result.output
    assert not (tmp_path / "b").exists()


def test_output_folder_that_exists(tiny_llama_dir, tmp_path):
    (tmp_path / "b").mkdir()
    result = run("export", "--checkpoint", str(tiny_llama_dir), "--target", "executorch", "--quant", "fp32",
                 "--output", str(tmp_path / "b"))
    assert result.exit_code == 1
    assert "already exists; remove it or pass another --output" in result.output


def test_context_longer_than_the_model(tiny_llama_dir, tmp_path):
    result = run("export", "--checkpoint", str(tiny_llama_dir), "--target", "executorch",
                 "--max-seq-len", "100000", "--output", str(tmp_path / "b"))
    assert result.exit_code == 1
    assert "exceeds the model's context of 256 tokens" in result.output
    assert not (tmp_path / "b").exists()


def test_validate_a_folder_that_is_not_a_bundle(tmp_path):
    result = run("validate", str(tmp_path))
    assert result.exit_code == 1
    assert "mobilekit.json is missing" in result.output


def test_unreachable_hub_names_the_local_fix(tmp_path):
    # conftest sets HF_HUB_OFFLINE=1, so the real huggingface_hub code path fails fast.
    result = run("export", "tinyllama-1.1b-chat", "--target", "executorch", "--output", str(tmp_path / "b"))
    assert result.exit_code == 1
    assert "could not fetch TinyLlama/TinyLlama-1.1B-Chat-v1.0@fe8a4ea" in result.output
    assert "--checkpoint PATH" in result.output
    assert not (tmp_path / "b").exists()


def test_recipe_and_checkpoint_family_must_agree(tiny_llama_dir, tmp_path):
    result = run("export", "smollm2-135m", "--checkpoint", str(tiny_llama_dir), "--target", "executorch",
                 "--quant", "fp32", "--max-seq-len", "64", "--output", str(tmp_path / "b"), "--no-validate")
    # Same family (llama): allowed, and the bundle records the local source.
    assert result.exit_code == 0, result.output
    import json

    manifest = json.loads((tmp_path / "b" / "mobilekit.json").read_text())
    assert manifest["checkpoint"]["kind"] == "local" and manifest["validation"]["performed"] is False


def test_export_all_targets_writes_three_bundles(tiny_llama_dir, tmp_path):
    result = run("export", "--checkpoint", str(tiny_llama_dir), "--target", "all", "--quant", "fp32",
                 "--max-seq-len", "64", "--output", str(tmp_path / "all"), "--no-validate")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["coreml", "executorch", "onnx"]
    assert (tmp_path / "all" / "onnx" / "genai_config.json").is_file()
    assert (tmp_path / "all" / "coreml" / "model.mlpackage").is_dir()
    assert (tmp_path / "all" / "executorch" / "model.pte").is_file()


def test_quant_a_target_lacks_fails_before_any_work(tiny_llama_dir, tmp_path):
    result = run("export", "--checkpoint", str(tiny_llama_dir), "--target", "all", "--quant", "fp16",
                 "--output", str(tmp_path / "all"))
    assert result.exit_code == 1
    assert "target executorch does not offer quant scheme 'fp16'. It offers: fp32, int8, int4" in result.output
    assert not (tmp_path / "all").exists()


# Qwen3's switch, as its template spells it (an empty think block when thinking is off)
THINKING_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                     "{% if add_generation_prompt %}<|im_start|>assistant\n"
                     "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
                     "{% endif %}{% endif %}")


def test_template_variables_reach_the_chat_template():
    from mobilekit.chat import format_prompt, template_variable

    manifest = {"chat_template": THINKING_TEMPLATE}
    assert "<think>" not in format_prompt(manifest, "hi")
    off = dict([template_variable("enable_thinking=false")])
    assert off == {"enable_thinking": False}
    assert format_prompt(manifest, "hi", off).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert template_variable("n=3") == ("n", 3) and template_variable("name=a=b") == ("name", "a=b")


@pytest.mark.parametrize("bad", ["enable_thinking", "=false", "not a name=1"])
def test_malformed_template_variable_is_a_usage_error(bad, tmp_path):
    result = run("generate", str(tmp_path), "hi", "--template-var", bad)
    assert result.exit_code == 2 and "--template-var" in result.output and "KEY=VALUE" in result.output
    assert not any(tmp_path.iterdir())
