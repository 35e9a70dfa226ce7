"""`mobilekit matrix`: every recipe x target x scheme ("a cell") exported and validated, the
way nightly CI converts everything to catch a dependency or a checkpoint that moved.

Isolation: the cells of one recipe run in one worker process (`python -m
mobilekit.matrix_worker`), which builds the checkpoint and the reference once and exports the
cells in turn. An exception in a cell is recorded with its traceback and the worker goes on.
A worker that dies (a converter's segfault, the OOM killer) or overruns --cell-timeout is
killed; its running cell is recorded as crashed or timed out with its log's tail, and a fresh
worker takes the recipe's remaining cells. One cell never stops the others.

Output folder: report.json (schema: mobilekit/data/matrix-report.schema.json), report.html,
logs/<recipe>.log (each worker's output), cells/*.json (each cell's record as it finished).
Bundles are removed after their cell unless asked to keep them (hub-mode bundles are GBs).

Sharding splits the sorted cell list into N contiguous, near-equal slices, so a recipe's
cells mostly stay on one runner (its checkpoint and reference are built once there).
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import platform
import queue
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Callable

from mobilekit import __version__, recipes, targets
from mobilekit.errors import MobilekitError
from mobilekit.matrix_html import render_html
from mobilekit.matrix_verdict import DEFAULT_TOLERANCES, failure_reason
from mobilekit.memory import total_memory

SCHEMA_VERSION = 1
STATUSES = ("passed", "failed", "error", "crashed", "timeout")
# Converters and runtimes whose versions a report records (a nightly diff starts here).
RUNTIME_PACKAGES = ("torch", "torchao", "executorch", "transformers", "tokenizers", "onnx", "onnxscript",
                    "onnxruntime", "onnxruntime-genai", "coremltools", "numpy")
# Absolute floors under the relative error tolerance, so noise around ~0 is not a regression.
_ERROR_FLOORS = {"max_abs_logit_error": 1e-4, "ppl_increase_pct": 0.5}
LOG_TAIL_CHARS = 4000


class MatrixError(MobilekitError):
    pass


@dataclass(frozen=True, order=True)
class Cell:
    recipe: str
    target: str
    scheme: str

    @property
    def id(self) -> str:
        return f"{self.recipe}/{self.target}/{self.scheme}"

    @property
    def file_stem(self) -> str:
        return f"{self.recipe}__{self.target}__{self.scheme}"


# --- choosing cells ---------------------------------------------------------------------


def select_cells(recipe_globs: str = "*", target_names: list[str] | None = None,
                 schemes: list[str] | None = None) -> list[Cell]:
    """Sorted cells: recipes matching any of the comma-separated globs x the targets x the
    schemes each target offers (all of them unless `schemes` narrows it)."""
    patterns = [p.strip() for p in recipe_globs.split(",") if p.strip()]
    chosen = [r for r in recipes.names() if any(fnmatch.fnmatchcase(r, p) for p in patterns)]
    if not chosen:
        raise MatrixError(f"--recipes {recipe_globs!r} matches no recipe; `mobilekit list` shows them all")
    cells = []
    for target_name in target_names or targets.names():
        offered = targets.get(target_name).schemes
        cells += [Cell(r, target_name, s) for r in chosen for s in offered if schemes is None or s in schemes]
    if not cells:
        raise MatrixError(f"no target among {target_names or targets.names()} offers any of --quant {schemes}")
    return sorted(cells)


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise MatrixError(f"--shard {text!r}: expected I/N, e.g. 2/4") from None
    if not 1 <= index <= count:
        raise MatrixError(f"--shard {text!r}: I must be between 1 and N")
    return index, count


def shard(cells: list[Cell], index: int, count: int) -> list[Cell]:
    """Shard `index` of `count` (1-based): a contiguous slice of the sorted cells. Every cell
    is in exactly one shard, and shard sizes differ by at most one."""
    ordered = sorted(cells)
    return ordered[(index - 1) * len(ordered) // count: index * len(ordered) // count]


# --- running cells ----------------------------------------------------------------------

Event = Callable[[str, Cell, dict | None], None]  # ("start" | "end", cell, record at "end")


def run(cells: list[Cell], mode: str, output: Path, jobs: int = 1, cell_timeout: float = 1800.0,
        keep_bundles: bool = False, on_event: Event = lambda *_: None) -> list[dict]:
    """Run every cell (each recipe's in its own worker process; `jobs` recipes at a time) and
    return their records in cell order."""
    output = Path(output)
    for folder in ("cells", "logs", "work"):
        (output / folder).mkdir(parents=True, exist_ok=True)
    by_recipe: dict[str, list[Cell]] = {}
    for cell in sorted(cells):
        by_recipe.setdefault(cell.recipe, []).append(cell)
    # torch's threads split between the workers running side by side
    threads = max(1, (os.cpu_count() or 1) // jobs)
    lock = threading.Lock()

    def locked_event(kind, cell, record):
        with lock:
            on_event(kind, cell, record)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        # list() re-raises here whatever went wrong in a thread
        list(pool.map(lambda group: _RecipeRun(group, mode, output, threads, cell_timeout, keep_bundles,
                                               locked_event).run(), by_recipe.values()))
    if not keep_bundles:
        shutil.rmtree(output / "work", ignore_errors=True)  # each recipe's folder is gone already
    return [json.loads((output / "cells" / f"{c.file_stem}.json").read_text()) for c in sorted(cells)]


class _RecipeRun:
    """One recipe's cells through worker processes, restarting a worker after a crash."""

    def __init__(self, cells, mode, output, threads, cell_timeout, keep_bundles, on_event):
        self.cells, self.mode, self.output = cells, mode, output
        self.threads, self.cell_timeout, self.keep_bundles, self.on_event = threads, cell_timeout, keep_bundles, on_event
        self.recipe = cells[0].recipe
        self.log = output / "logs" / f"{self.recipe}.log"
        self.work = output / "work" / self.recipe

    def run(self) -> None:
        remaining = list(self.cells)
        attempt = 0
        while remaining:
            attempt += 1
            remaining = self._one_worker(remaining, attempt)
        if not self.keep_bundles:
            shutil.rmtree(self.work, ignore_errors=True)

    def _one_worker(self, cells: list[Cell], attempt: int) -> list[Cell]:
        """Start a worker on `cells`; return those it did not finish (after recording the one
        it died on)."""
        self.work.mkdir(parents=True, exist_ok=True)
        job = self.work / f"job-{attempt}.json"
        job.write_text(json.dumps({
            "recipe": self.recipe, "mode": self.mode, "cells": [[c.target, c.scheme] for c in cells],
            "work_dir": str(self.work), "results_dir": str(self.output / "cells"), "threads": self.threads,
            "keep_bundles": self.keep_bundles, "log": str(self.log.relative_to(self.output)),
        }))
        with open(self.log, "a") as log:
            log.write(f"\n===== worker {attempt} for {len(cells)} cell(s), {_now()} =====\n")
            log.flush()
            process = subprocess.Popen([sys.executable, "-m", "mobilekit.matrix_worker", str(job)],
                                       stdout=subprocess.PIPE, stderr=log, text=True,
                                       env={**os.environ, "PYTHONFAULTHANDLER": "1"})
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in process.stdout] + [lines.put(None)], daemon=True).start()
        left = {c.id: c for c in cells}
        # the timeout runs from the worker's start (its setup) and from each cell's start
        running, started = None, time.monotonic()
        timed_out = False
        while True:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                if not timed_out and time.monotonic() - started > self.cell_timeout:
                    process.kill()
                    timed_out = True
                continue
            if line is None:
                break
            event = json.loads(line)
            cell = left[event["cell"]]
            if event["event"] == "start":
                running, started = cell, time.monotonic()
                self.on_event("start", cell, None)
            else:
                del left[cell.id]
                running, started = None, time.monotonic()
                self.on_event("end", cell, json.loads((self.output / "cells" / f"{cell.file_stem}.json").read_text()))
        returncode = process.wait()
        if not left:
            return []
        # Died (or was killed) in a cell: that cell is recorded here; a new worker takes the rest.
        # Died outside any cell (while building the checkpoint): every remaining cell is.
        victims = [running] if running is not None else list(left.values())
        how = "timeout" if timed_out else "crashed"
        seconds = time.monotonic() - started
        for cell in victims:
            record = self._lost_cell_record(cell, how, returncode, seconds)
            (self.output / "cells" / f"{cell.file_stem}.json").write_text(json.dumps(record, indent=1))
            del left[cell.id]
            self.on_event("end", cell, record)
        return sorted(left.values())

    def _lost_cell_record(self, cell: Cell, how: str, returncode: int, seconds: float) -> dict:
        reason = (f"killed after --cell-timeout {self.cell_timeout:g} s without finishing" if how == "timeout"
                  else f"the worker process died ({_describe_exit(returncode)})")
        return cell_record(cell, recipes.get(cell.recipe).family, how, seconds=seconds,
                           error={"type": how, "message": reason, "traceback": self._log_of(cell)},
                           log=str(self.log.relative_to(self.output)))


    def _log_of(self, cell: Cell) -> str:
        """The cell's part of the log: from faulthandler's "Fatal Python error" (its traceback
        comes first; the long list of extension modules after it is cut), else the tail."""
        text = self.log.read_text(errors="replace")
        text = text[max(0, text.rfind(f"--- {cell.id}\n")):]
        fatal = text.rfind("Fatal Python error")
        return text[fatal:fatal + LOG_TAIL_CHARS] if fatal >= 0 else text[-LOG_TAIL_CHARS:]


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        import signal

        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def cell_record(cell: Cell, family: str, status: str, *, seconds: float, export_seconds=None, peak_rss_mb=None,
                artefact_bytes=None, validation=None, error=None, log=None) -> dict:
    """One cell of report.json (the schema's $defs/cell)."""
    return {
        "id": cell.id, "recipe": cell.recipe, "family": family, "target": cell.target, "scheme": cell.scheme,
        "status": status, "seconds": round(seconds, 2), "export_seconds": export_seconds, "peak_rss_mb": peak_rss_mb,
        "artefact_bytes": artefact_bytes, "validation": validation, "error": error, "log": log,
    }


# --- the report -------------------------------------------------------------------------


def build_report(records: list[dict], mode: str, selection: dict, wall_seconds: float) -> dict:
    report = {
        "schema_version": SCHEMA_VERSION,
        "mobilekit_version": _mobilekit_version(),
        "created": _now(),
        "checkpoint_mode": mode,
        "selection": selection,
        "host": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count() or 1,
                 "memory_gb": round(total_memory() / 1e9, 1)},
        "runtime_versions": runtime_versions(),
        "wall_seconds": round(wall_seconds, 1),
        "summary": summarize(records),
        "cells": sorted(records, key=lambda r: r["id"]),
    }
    return report


def summarize(records: list[dict]) -> dict:
    return {"total": len(records), **{s: sum(r["status"] == s for r in records) for s in STATUSES}}


def runtime_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in RUNTIME_PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def schema() -> dict:
    return json.loads((resources.files("mobilekit") / "data" / "matrix-report.schema.json").read_text())


def check_report(report: dict, where: str = "the report") -> None:
    """Raise MatrixError naming the first place `report` breaks the schema."""
    import jsonschema

    try:
        jsonschema.validate(report, schema())
    except jsonschema.ValidationError as e:
        path = "/".join(map(str, e.absolute_path)) or "(top level)"
        raise MatrixError(f"{where} is not a mobilekit matrix report (schema version {SCHEMA_VERSION}): "
                          f"at {path}: {e.message}") from None


def write_report(report: dict, output: Path) -> tuple[Path, Path]:
    """report.json and report.html, each written whole then renamed into place."""
    check_report(report)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    paths = output / "report.json", output / "report.html"
    for path, text in zip(paths, (json.dumps(report, indent=1), render_html(report))):
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text)
        partial.replace(path)
    return paths


def read_report(path: Path) -> dict:
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise MatrixError(f"cannot read matrix report {path}: {e}") from None
    check_report(report, str(path))
    return report


# --- merging shards ---------------------------------------------------------------------


def merge(reports: dict[str, dict]) -> tuple[dict, list[str]]:
    """One report from shard reports ({path: report}); also the shards missing from 1..N."""
    if not reports:
        raise MatrixError("give the shard reports to merge")
    (first_path, first), *rest = reports.items()
    for path, report in rest:
        for key in ("checkpoint_mode", "schema_version"):
            if report[key] != first[key]:
                raise MatrixError(f"{path} has {key} {report[key]!r}, {first_path} has {first[key]!r}: "
                                  "they are not shards of one matrix")
        for key in ("recipes", "targets", "quant"):
            if report["selection"][key] != first["selection"][key]:
                raise MatrixError(f"{path} selected {key} {report['selection'][key]!r}, {first_path} "
                                  f"{first['selection'][key]!r}: shards of one matrix share their selection")
    seen: dict[str, str] = {}
    cells = []
    for path, report in reports.items():
        for cell in report["cells"]:
            if cell["id"] in seen:
                raise MatrixError(f"cell {cell['id']} is in both {seen[cell['id']]} and {path}; "
                                  "merge each shard's report once")
            seen[cell["id"]] = path
            cells.append(cell)
    shards = sorted({s for r in reports.values() for s in r["selection"]["shards"]},
                    key=lambda s: tuple(map(int, s.split("/"))))
    counts = {int(s.split("/")[1]) for s in shards}
    if len(counts) != 1:
        raise MatrixError(f"the reports come from different shard counts ({', '.join(shards)})")
    count = counts.pop()
    missing = [f"{i}/{count}" for i in range(1, count + 1) if f"{i}/{count}" not in shards]
    merged = build_report(cells, first["checkpoint_mode"], {**first["selection"], "shards": shards},
                          max(r["wall_seconds"] for r in reports.values()))
    merged["host"], merged["runtime_versions"] = first["host"], first["runtime_versions"]
    return merged, missing


# --- regressions against a baseline -----------------------------------------------------


def compare(report: dict, baseline: dict, baseline_path: str, tolerances: dict | None = None) -> dict:
    """The report's `baseline` section: each regression (a cell that passed and now does not,
    a new cell that does not pass, an artefact or a stage-2 error metric grown past its
    tolerance), the cells fixed since, and the baseline's cells this report lacks."""
    tolerances = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    before = {c["id"]: c for c in baseline["cells"]}
    regressions, fixed = [], []
    for cell in report["cells"]:
        old = before.get(cell["id"])
        if old is None:
            if cell["status"] != "passed":
                regressions.append(_regression(cell, "new_cell_failing", f"new cell, {cell['status']}: {failure_reason(cell)}",
                                               None, cell["status"]))
            continue
        if old["status"] == "passed" and cell["status"] != "passed":
            regressions.append(_regression(cell, "status", f"passed before, now {cell['status']}: {failure_reason(cell)}",
                                           old["status"], cell["status"]))
        elif old["status"] != "passed" and cell["status"] == "passed":
            fixed.append(cell["id"])
        regressions += _metric_regressions(cell, old, tolerances)
    return {
        "path": baseline_path, "created": baseline["created"], "tolerances": tolerances,
        "regressions": regressions, "fixed": fixed,
        "missing": sorted(set(before) - {c["id"] for c in report["cells"]}),
    }


def _metric_regressions(cell: dict, old: dict, tolerances: dict) -> list[dict]:
    found = []
    if cell["artefact_bytes"] and old["artefact_bytes"]:
        limit = old["artefact_bytes"] * (1 + tolerances["size_growth"])
        if cell["artefact_bytes"] > limit:
            growth = cell["artefact_bytes"] / old["artefact_bytes"] - 1
            found.append(_regression(cell, "size", f"artefact grew {growth:+.1%} (tolerance "
                                     f"{tolerances['size_growth']:.0%})", old["artefact_bytes"], cell["artefact_bytes"]))
    now, then = _stage2_metrics(cell), _stage2_metrics(old)
    if now is None or then is None:
        return found
    for metric, floor in _ERROR_FLOORS.items():
        limit = then[metric] + tolerances["error_growth"] * abs(then[metric]) + floor
        if now[metric] > limit:
            found.append(_regression(cell, metric, f"stage-2 {metric} {then[metric]:.4g} -> {now[metric]:.4g} "
                                     f"(tolerance +{tolerances['error_growth']:.0%})", then[metric], now[metric]))
    if now["top1_agreement"] < then["top1_agreement"] - tolerances["top1_drop"]:
        found.append(_regression(cell, "top1_agreement", f"stage-2 top-1 {then['top1_agreement']:.1%} -> "
                                 f"{now['top1_agreement']:.1%} (tolerance -{tolerances['top1_drop']:.0%})",
                                 then["top1_agreement"], now["top1_agreement"]))
    return found


def _stage2_metrics(cell: dict) -> dict | None:
    return ((cell.get("validation") or {}).get("stage2") or {}).get("metrics")


def _regression(cell: dict, kind: str, detail: str, baseline, current) -> dict:
    return {"cell": cell["id"], "kind": kind, "detail": detail, "baseline": baseline, "current": current}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _mobilekit_version() -> str:
    return __version__


def shard_labels(count: int) -> list[str]:
    """The --shard values of an N-way split (what the nightly workflow's matrix lists)."""
    return [f"{i}/{count}" for i in range(1, count + 1)]


def shard_count(cells: int, cells_per_shard: int) -> int:
    return max(1, math.ceil(cells / cells_per_shard))
