"""`optimum-cli export mobilekit`: registered through optimum's own command namespace, and the
same export as `mobilekit export` (pipeline, validation, exit codes, bundle)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mobilekit.optimum_command import export_arguments
from mobilekit.tiny import TINY_LLAMA, make_tiny_checkpoint

OPTIMUM_CLI = str(Path(sys.executable).parent / "optimum-cli")


def optimum_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # run from another folder: the command must come from the installed package, not the repo
    return subprocess.run([OPTIMUM_CLI, "export", "mobilekit", *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd, stdin=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_model_is_a_recipe_id_or_a_checkpoint():
    assert export_arguments("smollm2-135m", "out", "onnx", "int4") == [
        "export", "smollm2-135m", "--target", "onnx", "--output", "out", "--quant", "int4"]
    assert export_arguments("./my-finetune", "out") == [
        "export", "--checkpoint", "./my-finetune", "--target", "executorch", "--output", "out"]
    assert export_arguments("me/tuned@abc", "out", recipe="smollm2-135m", extra=("--no-validate",)) == [
        "export", "smollm2-135m", "--checkpoint", "me/tuned@abc", "--target", "executorch", "--output", "out",
        "--no-validate"]


def test_optimum_cli_writes_the_same_validated_bundle_as_mobilekit_export(tmp_path):
    checkpoint = make_tiny_checkpoint(tmp_path / "tiny", TINY_LLAMA)
    out = tmp_path / "bundle"
    result = optimum_cli("--model", str(checkpoint), "--target", "onnx", "--quant", "int4", "--max-seq-len", "64",
                         str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "mobilekit.json").read_text())
    assert manifest["target"] == "onnx" and manifest["quant"] == "int4"
    assert manifest["validation"]["performed"] and manifest["validation"]["passed"]
    assert (out / "README.md").is_file()

    direct = tmp_path / "direct"
    result = subprocess.run([str(Path(sys.executable).parent / "mobilekit"), "export", "--checkpoint", str(checkpoint),
                             "--target", "onnx", "--quant", "int4", "--max-seq-len", "64", "--output", str(direct)],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    same = json.loads((direct / "mobilekit.json").read_text())
    assert same["files"] == manifest["files"], "optimum-cli and mobilekit export wrote different files"


def test_optimum_cli_bad_input_is_mobilekits_clean_error(tmp_path):
    out = tmp_path / "bundle"
    result = optimum_cli("--model", str(tmp_path / "missing"), "--target", "onnx", str(out), cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert str(tmp_path / "missing") in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()
