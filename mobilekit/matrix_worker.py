"""One recipe's matrix cells in one process: `python -m mobilekit.matrix_worker JOB.json`
(started by mobilekit.matrix, never by hand).

The checkpoint (tiny: built here from the recipe's architecture; hub: the recipe's pinned
snapshot) and the reference run are shared by the cells. Each cell's record is written to
results_dir/<recipe>__<target>__<scheme>.json before its "end" event. Events are JSON lines on
the original stdout; everything else (progress, library output, a fault's traceback) goes to
stderr, which the parent appends to the recipe's log.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

import torch

from mobilekit import checkpoint, pipeline, recipes, tiny
from mobilekit.matrix import Cell, cell_record


def main(job_path: str) -> None:
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # C and Python prints from converters go to the log, not into the event stream
    sys.stdout = sys.stderr
    job = json.loads(Path(job_path).read_text())

    torch.set_num_threads(job["threads"])
    recipe = recipes.get(job["recipe"])
    cells = [Cell(recipe.id, target, scheme) for target, scheme in job["cells"]]
    work, results = Path(job["work_dir"]), Path(job["results_dir"])

    def emit(kind: str, cell: Cell) -> None:
        events.write(json.dumps({"event": kind, "cell": cell.id}) + "\n")

    def finish(cell: Cell, record: dict) -> None:
        partial = results / f"{cell.file_stem}.json.partial"
        partial.write_text(json.dumps(record, indent=1))
        partial.replace(results / f"{cell.file_stem}.json")
        emit("end", cell)

    setup_started = time.perf_counter()
    try:
        context = _context(recipe, job["mode"], work)
    except Exception as e:  # the checkpoint cannot be had: every cell fails the same way
        traceback.print_exc()
        for cell in cells:
            emit("start", cell)
            finish(cell, cell_record(cell, recipe.family, "error", seconds=time.perf_counter() - setup_started,
                                     error=_error(e), log=job["log"]))
        return
    for cell in cells:
        emit("start", cell)
        print(f"--- {cell.id}", file=sys.stderr, flush=True)
        finish(cell, _run_cell(context, cell, recipe.family, work, job))


def _context(recipe, mode: str, work: Path):
    if mode == "hub":
        return pipeline.make_context(recipe, None, None)
    folder = work / "checkpoint"
    if not (folder / "config.json").exists():  # a restarted worker reuses its predecessor's
        staging = work / "checkpoint.partial"
        shutil.rmtree(staging, ignore_errors=True)
        tiny.make_tiny_checkpoint(staging, tiny.recipe_tiny_config(recipe))
        staging.rename(folder)
    length = min(tiny.TINY_SEQ_LEN, checkpoint.resolve(str(folder)).spec.max_exportable_context)
    return pipeline.make_context(recipe, str(folder), length, budget_overrides=tiny.tiny_budgets(recipe.family))


def _run_cell(context, cell, family: str, work: Path, job: dict) -> dict:
    bundle_dir = work / "bundles" / cell.file_stem
    shutil.rmtree(bundle_dir, ignore_errors=True)  # a crashed predecessor's
    _reset_peak_rss()
    started = time.perf_counter()
    try:
        result = pipeline.export(context, pipeline.ExportOptions(target=cell.target, scheme=cell.scheme,
                                                                 output=bundle_dir, keep_failed=True),
                                 lambda message: print(f"{cell.id}: {message}", file=sys.stderr, flush=True))
    except Exception as e:
        traceback.print_exc()
        return cell_record(cell, family, "error", seconds=time.perf_counter() - started, peak_rss_mb=_peak_rss_mb(),
                           error=_error(e), log=job["log"])
    manifest = result.manifest
    validation = _slim_validation(manifest["validation"])
    record = cell_record(
        cell, family, "passed" if validation["passed"] else "failed", seconds=time.perf_counter() - started,
        export_seconds=manifest["export"]["seconds"], peak_rss_mb=_peak_rss_mb(),
        artefact_bytes=manifest["size_bytes"], validation=validation, log=job["log"],
    )
    if not job["keep_bundles"]:
        shutil.rmtree(bundle_dir, ignore_errors=True)
    return record


def _slim_validation(validation: dict) -> dict:
    """The manifest's validation without its token lists (kept in the bundle's manifest)."""
    slim = {"reference": validation["reference"], "passed": validation["passed"]}
    for stage in ("stage1", "stage2"):
        record = dict(validation[stage])
        record.pop("greedy_tokens", None)
        if "app_runtime" in record:
            app = record["app_runtime"]
            record["app_runtime"] = {"runtime": app["runtime"], "greedy_match": app["greedy_match"],
                                     "passed": app["passed"]}
        slim[stage] = record
    return slim


def _error(e: BaseException) -> dict:
    return {"type": type(e).__name__, "message": str(e), "traceback": traceback.format_exc()}


def _reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets this process's peak RSS (VmHWM), so each cell's
    peak is its own and not an earlier cell's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource  # not Linux: the process's peak so far (macOS reports bytes)

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / 2**20 if sys.platform == "darwin" else peak / 1024, 1)


if __name__ == "__main__":
    main(sys.argv[1])
