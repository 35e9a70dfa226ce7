"""The Python API (mobilekit.export, load_bundle, list_recipes, run_matrix, Bundle): the CLI's own
engine, typed results, errors as MobilekitError subclasses, nothing printed by mobilekit."""

from __future__ import annotations

from pathlib import Path

import pytest

import mobilekit
from mobilekit.errors import EXIT_USAGE, BundleError, MobilekitError, UnknownNameError, UsageError
from mobilekit.tiny import TINY_LLAMA, make_tiny_checkpoint

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    checkpoint = make_tiny_checkpoint(tmp_path_factory.mktemp("api") / "tiny", TINY_LLAMA)
    steps: list[str] = []
    bundle = mobilekit.export(str(checkpoint), target="onnx", quant="fp32", max_seq_len=64,
                              output=tmp_path_factory.mktemp("api-out") / "bundle", progress=steps.append)
    return bundle, steps


def test_export_returns_the_bundle_and_reports_progress_through_the_callback(exported, capsys):
    bundle, steps = exported
    assert isinstance(bundle, mobilekit.Bundle)
    assert bundle.target == "onnx" and bundle.quant == "fp32" and bundle.passed is True
    assert (bundle.path / "mobilekit.json").is_file() and "model.onnx" in bundle.files
    assert any("stage 2" in step for step in steps), steps
    assert capsys.readouterr().out == ""  # mobilekit printed nothing


def test_a_loaded_bundle_validates_generates_and_benches(exported):
    bundle = mobilekit.load_bundle(exported[0].path)
    assert bundle.manifest == exported[0].manifest
    assert bundle.validate()["passed"] is True
    pieces: list[str] = []
    result = bundle.generate("Hello", max_new_tokens=4, on_text=pieces.append)
    assert result.text == "".join(pieces) and len(result.token_ids) <= 4 and result.decode_tokens_per_s > 0
    row = bundle.bench(new_tokens=4)
    assert row["decode_tokens_per_s"] > 0 and row["size_mb"] > 0


def test_recipes_lists_the_registry():
    ids = {recipe.id for recipe in mobilekit.list_recipes()}
    assert "smollm2-135m" in ids and len(ids) > 40


def test_errors_are_mobilekit_errors_with_the_clis_exit_codes(tmp_path):
    with pytest.raises(BundleError, match="not a mobilekit bundle"):
        mobilekit.load_bundle(tmp_path)
    with pytest.raises(UsageError, match="needs a goal") as caught:
        mobilekit.export_each(None, ["onnx"], checkpoint=str(tmp_path), quant="auto")
    assert caught.value.exit_code == EXIT_USAGE
    with pytest.raises(MobilekitError):
        mobilekit.export(str(tmp_path / "missing"), target="onnx")
    with pytest.raises(UnknownNameError):
        mobilekit.export_each("no-such-recipe", ["onnx"])


def test_matrix_runs_cells_and_returns_the_report(tmp_path):
    report = mobilekit.run_matrix(recipes="smollm2-135m", targets=["onnx"], quants=["fp32"], output=tmp_path / "m")
    assert report["summary"]["passed"] == 1, report["summary"]
    assert (tmp_path / "m" / "report.json").is_file() and (tmp_path / "m" / "report.html").is_file()


def test_the_api_names_are_not_shadowed_by_submodules():
    import mobilekit.matrix  # noqa: F401  (binds the submodule on the package)
    import mobilekit.recipes  # noqa: F401

    for name in mobilekit.API:
        assert callable(getattr(mobilekit, name)) and not isinstance(getattr(mobilekit, name), type(mobilekit)), name


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch):
    """The README's Python block, verbatim (the embedded SmolLM2 through ONNX fp16), run in
    an empty folder so its out/ lands there."""
    text = README.read_text()
    start = text.index("```python\nimport mobilekit\n") + len("```python\n")
    block = text[start:text.index("```", start)]
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md (Python API example)", "exec"), {})
    assert (tmp_path / "out" / "smol-onnx" / "mobilekit.json").is_file()
    assert (tmp_path / "out" / "m" / "report.json").is_file()
