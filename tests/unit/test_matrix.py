"""`mobilekit matrix`: cell selection, sharding, merging, baseline regressions (on synthetic
reports), and one real tiny matrix through the CLI with a broken and a crashing cell injected."""

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mobilekit import matrix as mx
from mobilekit import quantize, recipes, targets

# --- selection and sharding ---------------------------------------------------------------


def test_select_cells_covers_recipes_targets_and_offered_schemes():
    cells = mx.select_cells()
    offered = sum(len(targets.get(t).schemes) for t in targets.names())
    assert len(cells) == len(recipes.names()) * offered == len({c.id for c in cells})
    assert cells == sorted(cells)
    some = mx.select_cells("qwen2-*,smollm2-135m", ["onnx", "executorch"], ["int4", "fp16"])
    assert {c.recipe for c in some} == {"qwen2-0.5b-instruct", "qwen2-1.5b-instruct", "qwen2-7b-instruct", "smollm2-135m"}
    # ExecuTorch offers no fp16: only ONNX has both schemes
    assert {(c.target, c.scheme) for c in some} == {("onnx", "int4"), ("onnx", "fp16"), ("executorch", "int4")}
    with pytest.raises(mx.MatrixError, match="matches no recipe"):
        mx.select_cells("no-such-*")


@pytest.mark.parametrize("count", [1, 2, 3, 7, 64])
def test_shards_cover_every_cell_exactly_once(count):
    cells = mx.select_cells()
    shards = [mx.shard(cells, i, count) for i in range(1, count + 1)]
    flat = [c for s in shards for c in s]
    assert sorted(flat) == cells and len(set(flat)) == len(cells)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert shards == [mx.shard(list(reversed(cells)), i, count) for i in range(1, count + 1)], "order-independent"


@pytest.mark.parametrize("text", ["0/3", "4/3", "2", "a/b", "1/0"])
def test_bad_shard_is_refused(text):
    with pytest.raises(mx.MatrixError, match="--shard"):
        mx.parse_shard(text)


# --- synthetic reports: schema, merge, baseline -------------------------------------------


def _metrics(max_abs=0.2, top1=0.8, ppl_pct=3.0):
    return {"max_abs_logit_error": max_abs, "min_cosine": 0.9, "mean_cosine": 0.95, "top1_agreement": top1,
            "greedy_match": 0.5, "reference_ppl": 100.0, "ppl": 100.0 * (1 + ppl_pct / 100), "ppl_increase_pct": ppl_pct,
            "positions": 80}


def _cell(cell_id, status="passed", size=1000, **metric_values):
    recipe, target, scheme = cell_id.split("/")
    stage = {"runtime": "r", "metrics": _metrics(**metric_values), "budget": {"min_mean_cosine": 0.8},
             "passed": status == "passed", "misses": [] if status == "passed" else ["top-1 0.1 < 0.4"]}
    validated = status in ("passed", "failed")
    return mx.cell_record(
        mx.Cell(recipe, target, scheme), "llama", status, seconds=1.0, export_seconds=0.5 if validated else None,
        peak_rss_mb=500.0, artefact_bytes=size if validated else None,
        validation={"reference": "ref", "passed": status == "passed", "stage1": {"skipped": "why", "passed": True},
                    "stage2": stage} if validated else None,
        error=None if validated else {"type": "RuntimeError", "message": "boom <&>", "traceback": "Traceback ..."},
        log="logs/x.log")


def _report(cells, shard="1/1", mode="tiny"):
    return mx.build_report(cells, mode, {"recipes": "*", "targets": ["onnx"], "quant": ["int4"], "shards": [shard]}, 12.0)


def test_report_schema_accepts_reports_and_rejects_broken_ones():
    report = _report([_cell("a/onnx/int4"), _cell("b/onnx/int4", "failed"), _cell("c/onnx/int4", "crashed")])
    mx.check_report(report)
    assert report["summary"] == {"total": 3, "passed": 1, "failed": 1, "error": 0, "crashed": 1, "timeout": 0}
    broken = copy.deepcopy(report)
    broken["cells"][0]["status"] = "fine"
    with pytest.raises(mx.MatrixError, match="cells/0/status"):
        mx.check_report(broken)
    del broken["cells"][0]["peak_rss_mb"]
    with pytest.raises(mx.MatrixError, match="peak_rss_mb"):
        mx.check_report(broken)


def test_merge_joins_shards_and_refuses_overlaps():
    first, second = _report([_cell("a/onnx/int4")], "1/3"), _report([_cell("b/onnx/int4", "error")], "3/3")
    merged, missing = mx.merge({"s1.json": first, "s3.json": second})
    mx.check_report(merged)
    assert [c["id"] for c in merged["cells"]] == ["a/onnx/int4", "b/onnx/int4"]
    assert merged["summary"]["passed"] == 1 and merged["summary"]["error"] == 1
    assert merged["selection"]["shards"] == ["1/3", "3/3"] and missing == ["2/3"]
    with pytest.raises(mx.MatrixError, match="a/onnx/int4 is in both"):
        mx.merge({"s1.json": first, "again.json": _report([_cell("a/onnx/int4")], "2/3")})
    with pytest.raises(mx.MatrixError, match="checkpoint_mode"):
        mx.merge({"s1.json": first, "hub.json": _report([_cell("c/onnx/int4")], "2/3", mode="hub")})


def test_baseline_flags_each_injected_regression_and_nothing_else():
    baseline = _report([
        _cell("ok/onnx/int4"), _cell("breaks/onnx/int4"), _cell("grows/onnx/int4", size=1000),
        _cell("noisier/onnx/int4", max_abs=0.2), _cell("worse/onnx/int4", top1=0.8),
        _cell("fixed/onnx/int4", "error"), _cell("gone/onnx/int4"), _cell("still-broken/onnx/int4", "failed"),
    ])
    current = _report([
        _cell("ok/onnx/int4", size=1010, max_abs=0.25, top1=0.78),  # within every tolerance
        _cell("breaks/onnx/int4", "crashed"), _cell("grows/onnx/int4", size=1100),
        _cell("noisier/onnx/int4", max_abs=0.9), _cell("worse/onnx/int4", top1=0.6),
        _cell("fixed/onnx/int4"), _cell("still-broken/onnx/int4", "failed"), _cell("new/onnx/int4", "error"),
    ])
    section = mx.compare(current, baseline, "base.json")
    found = {(r["cell"], r["kind"]) for r in section["regressions"]}
    assert found == {("breaks/onnx/int4", "status"), ("grows/onnx/int4", "size"),
                     ("noisier/onnx/int4", "max_abs_logit_error"), ("worse/onnx/int4", "top1_agreement"),
                     ("new/onnx/int4", "new_cell_failing")}
    assert section["fixed"] == ["fixed/onnx/int4"] and section["missing"] == ["gone/onnx/int4"]
    current["baseline"] = section
    mx.check_report(current)
    # looser tolerances accept the size and metric changes; status changes stay regressions
    loose = mx.compare(current, baseline, "base.json", {"size_growth": 0.5, "error_growth": 10, "top1_drop": 0.5})
    assert {r["kind"] for r in loose["regressions"]} == {"status", "new_cell_failing"}


# --- a real tiny matrix through the CLI ----------------------------------------------------

# Injected into the CLI's processes (sitecustomize runs at every interpreter start): one cell
# raises inside the export, another kills its worker with SIGSEGV, as a converter crash would.
INJECT = textwrap.dedent("""
    import os, signal
    import mobilekit.pipeline as pipeline

    real_export = pipeline.export

    def export(context, options, progress=lambda _m: None):
        cell = f"{context.recipe.id}/{options.target}/{options.scheme}"
        if cell == os.environ.get("MATRIX_TEST_RAISE"):
            raise RuntimeError("injected failure <in a cell>")
        if cell == os.environ.get("MATRIX_TEST_CRASH"):
            os.kill(os.getpid(), signal.SIGSEGV)
        return real_export(context, options, progress)

    pipeline.export = export
""")
RECIPES = "smollm2-135m,openelm-270m"
RAISES, CRASHES = "smollm2-135m/onnx/int4", "openelm-270m/executorch/int4"


def _mobilekit(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "mobilekit.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=1500)


@pytest.fixture(scope="module")
def tiny_matrix(tmp_path_factory):
    """Two recipes (a transformers family and OpenELM) x every target at int4, tiny mode."""
    root = tmp_path_factory.mktemp("matrix")
    (root / "inject").mkdir()
    (root / "inject" / "sitecustomize.py").write_text(INJECT)
    env = {"PYTHONPATH": str(root / "inject"), "MATRIX_TEST_RAISE": RAISES, "MATRIX_TEST_CRASH": CRASHES}
    run = _mobilekit("matrix", "--recipes", RECIPES, "--quant", "int4", "--checkpoint-mode", "tiny",
                     "--output", str(root / "out"), "--jobs", "2", env=env)
    return root / "out", run


def test_tiny_matrix_isolates_a_failing_and_a_crashing_cell(tiny_matrix):
    out, run = tiny_matrix
    assert run.returncode == 1, run.stderr[-3000:]  # cells failed and no baseline was given
    report = json.loads((out / "report.json").read_text())
    mx.check_report(report)
    cells = {c["id"]: c for c in report["cells"]}
    assert sorted(cells) == [c.id for c in mx.select_cells(RECIPES, None, ["int4"])]
    assert cells[RAISES]["status"] == "error"
    assert "injected failure <in a cell>" in cells[RAISES]["error"]["message"]
    assert "RuntimeError" in cells[RAISES]["error"]["traceback"]
    crashed = cells[CRASHES]
    assert crashed["status"] == "crashed" and "SIGSEGV" in crashed["error"]["message"]
    assert "Segmentation fault" in crashed["error"]["traceback"]  # faulthandler's dump, from the log's tail
    passed = [c for c in cells.values() if c["id"] not in (RAISES, CRASHES)]
    # openelm-270m/onnx/int4 ran after the crash, in a fresh worker
    assert [c["status"] for c in passed] == ["passed"] * 4, [c["validation"] for c in passed]
    for cell in passed:
        assert cell["artefact_bytes"] > 10_000 and cell["export_seconds"] > 0 and cell["peak_rss_mb"] > 100
        assert cell["validation"]["stage2"]["metrics"]["mean_cosine"] > 0.8
    assert cells["openelm-270m/onnx/int4"]["validation"]["stage1"]["skipped"]  # no transformers reference
    assert (out / "report.html").stat().st_size > 10_000
    assert (out / cells[CRASHES]["log"]).exists()
    assert report["summary"] == {"total": 6, "passed": 4, "failed": 0, "error": 1, "crashed": 1, "timeout": 0}
    assert "4/6 cells passed" in run.stdout
    assert not (out / "work" / "smollm2-135m").exists(), "bundles and checkpoints are removed after the run"


def test_merge_with_a_baseline_exits_4_on_regression(tiny_matrix, tmp_path):
    out, _ = tiny_matrix
    report = json.loads((out / "report.json").read_text())
    baseline = copy.deepcopy(report)
    for cell in baseline["cells"]:
        if cell["id"] == RAISES:  # it passed in the baseline
            cell.update(status="passed", error=None)
        if cell["id"] == "smollm2-135m/coreml/int4":  # and its artefact was 20% smaller
            cell["artefact_bytes"] = int(cell["artefact_bytes"] / 1.2)
    baseline["summary"] = mx.summarize(baseline["cells"])
    (tmp_path / "baseline.json").write_text(json.dumps(baseline))
    run = _mobilekit("matrix", "merge", str(out / "report.json"), "--output", str(tmp_path / "merged"),
                     "--baseline", str(tmp_path / "baseline.json"))
    assert run.returncode == 4, run.stderr
    assert f"regression {RAISES}: passed before, now error" in run.stderr
    assert "regression smollm2-135m/coreml/int4: artefact grew +20" in run.stderr
    merged = json.loads((tmp_path / "merged" / "report.json").read_text())
    assert len(merged["baseline"]["regressions"]) == 2
    # against itself nothing regressed, although two cells fail: exit 0
    same = _mobilekit("matrix", "merge", str(out / "report.json"), "--output", str(tmp_path / "same"),
                      "--baseline", str(out / "report.json"))
    assert same.returncode == 0, same.stderr


def test_bad_matrix_input_fails_before_any_work(tmp_path):
    (tmp_path / "not-a-report.json").write_text(json.dumps({"cells": []}))
    run = _mobilekit("matrix", "--recipes", "smollm2-135m", "--output", str(tmp_path / "out"),
                     "--baseline", str(tmp_path / "not-a-report.json"))
    assert run.returncode == 1 and "is not a mobilekit matrix report" in run.stderr
    assert not (tmp_path / "out").exists()
    run = _mobilekit("matrix", "--shard", "5/4", "--output", str(tmp_path / "out"))
    assert run.returncode == 1 and "--shard '5/4'" in run.stderr
    assert not (tmp_path / "out").exists()


def test_hub_mode_without_the_checkpoint_records_errors(tmp_path):
    """No network here: every hub cell of a recipe fails with the checkpoint's own message,
    recorded per cell; the run still completes."""
    run = _mobilekit("matrix", "--recipes", "pythia-160m", "--targets", "onnx", "--quant", "int4,fp32",
                     "--checkpoint-mode", "hub", "--output", str(tmp_path / "out"), env={"HF_HUB_OFFLINE": "1"})
    assert run.returncode == 1, run.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["checkpoint_mode"] == "hub" and report["summary"]["error"] == 2
    assert all("EleutherAI/pythia-160m" in c["error"]["message"] for c in report["cells"])


def test_a_worker_past_the_timeout_is_killed_and_its_cells_recorded(tmp_path):
    """A 1 s timeout kills the worker while it still builds the tiny checkpoint (imports alone
    take longer): its cells are recorded as timed out, and the run completes."""
    run = _mobilekit("matrix", "--recipes", "smollm2-135m", "--targets", "onnx", "--quant", "int4",
                     "--cell-timeout", "1", "--output", str(tmp_path / "out"))
    assert run.returncode == 1, run.stderr
    (cell,) = json.loads((tmp_path / "out" / "report.json").read_text())["cells"]
    assert cell["status"] == "timeout" and "--cell-timeout 1 s" in cell["error"]["message"]


def test_list_prints_each_shards_cells():
    everything = _mobilekit("matrix", "--list", "--quant", "int4").stdout.split()
    assert len(everything) == len(recipes.names()) * len(targets.names())
    parts = [_mobilekit("matrix", "--list", "--quant", "int4", "--shard", f"{i}/3").stdout.split() for i in (1, 2, 3)]
    assert sum(parts, []) == everything


def test_tolerance_defaults_are_documented():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for name, value in mx.DEFAULT_TOLERANCES.items():
        assert f"--{name.replace('_', '-')} {value:g}" in readme, name
    assert set(mx.STATUSES) <= set(mx.schema()["$defs"]["status"]["enum"])
    assert quantize.names()  # the selection's default lists every scheme
