"""report.html of `mobilekit matrix` (mobilekit.matrix_html), on synthetic reports that are
checked against the report schema first, so the fixtures stay what `mobilekit matrix` writes.

The page is parsed with the stdlib's html.parser (rows, status classes, charts, no external
resources, escaping), then opened in headless Debian chromium: a screenshot that is not blank,
and a click on a column header that sorts the rows numerically (the page's own JavaScript).
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from mobilekit.matrix_html import render_html

STATUSES = ("passed", "failed", "error", "crashed", "timeout")
SCHEMES = {"executorch": ("fp32", "int8", "int4"), "onnx": ("fp32", "fp16", "int8", "int4"),
           "coreml": ("fp16", "fp32", "int8", "int4")}
# A traceback and a message as converters write them: <, > and & that must reach the page escaped.
TRACEBACK = ('Traceback (most recent call last):\n  File "<frozen runpy>", line 198, in <module>\n'
             "RuntimeError: shape [1, 4] & [1, 8] <mismatch>\n")
HOSTILE_MESSAGE = 'unsupported op <script>alert("x")</script> & more'
# Debian's chromium (.ci/run installs it); GitHub's Ubuntu runners ship Google Chrome instead.
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM = next((found for found in map(shutil.which, BROWSERS) if found), None)


# --- synthetic reports --------------------------------------------------------------------


def _stage(max_err: float, passed: bool = True, misses: tuple = ()) -> dict:
    metrics = {"max_abs_logit_error": max_err, "min_cosine": 0.995, "mean_cosine": 0.9991,
               "top1_agreement": 0.97, "greedy_match": 1.0, "reference_ppl": 12.5, "ppl": 12.6,
               "ppl_increase_pct": 0.8}
    return {"runtime": "onnxruntime", "metrics": metrics, "budget": {"max_abs_logit_error": 1.0},
            "passed": passed, "misses": list(misses)}


def make_cell(recipe: str, target: str, scheme: str, status: str, n: int = 0,
              export_seconds: float | None = None) -> dict:
    """One cell of each kind `mobilekit matrix` records; `n` varies its numbers."""
    cell = {"id": f"{recipe}/{target}/{scheme}", "recipe": recipe, "family": recipe.split("-")[0],
            "target": target, "scheme": scheme, "status": status, "seconds": 10.0 + n,
            "export_seconds": None, "peak_rss_mb": None, "artefact_bytes": None, "validation": None,
            "error": None, "log": f"logs/{recipe}.log"}
    if status in ("passed", "failed"):
        err = 0.002 * (n % 7 + 1) * (10 if scheme == "int4" else 1)
        stage2 = (_stage(err * 50, False, ("max_abs_logit_error = 5 exceeds its budget 1 by 4",))
                  if status == "failed" else _stage(err))
        # Core ML's runtime is macOS-only: its stage 1 is skipped on Linux
        stage1 = {"skipped": "the Core ML runtime needs macOS", "passed": True} if target == "coreml" else _stage(0.0)
        cell.update(export_seconds=export_seconds if export_seconds is not None else 2.0 + n % 13,
                    peak_rss_mb=400.0 + n, artefact_bytes=(300_000 + 4096 * n) * (4 if scheme == "fp32" else 1),
                    validation={"reference": "transformers fp32", "passed": status == "passed",
                                "stage1": stage1, "stage2": stage2})
    elif status == "error":
        cell["error"] = {"type": "RuntimeError", "message": HOSTILE_MESSAGE, "traceback": TRACEBACK}
    else:
        message = ("killed after --cell-timeout 1800 s" if status == "timeout"
                   else "the worker process died (signal SIGSEGV)")
        cell["error"] = {"type": status, "message": message, "traceback": "log tail: " + TRACEBACK}
    return cell


def make_cells(count: int) -> list[dict]:
    """`count` cells over recipes x targets x schemes, every status among them."""
    combos = [(t, s) for t, schemes in SCHEMES.items() for s in schemes]
    weights = ("passed",) * 6 + ("failed", "passed", "error", "passed", "crashed", "timeout")
    return [make_cell(f"recipe{n // len(combos):03d}-{n % 5}b", *combos[n % len(combos)],
                      weights[n % len(weights)], n) for n in range(count)]


def make_report(cells: list[dict], baseline: dict | None = None) -> dict:
    report = {
        "schema_version": 1, "mobilekit_version": "0.1.0", "created": "2025-01-02T03:04:05+00:00",
        "checkpoint_mode": "tiny",
        "selection": {"recipes": "*", "targets": list(SCHEMES), "quant": ["fp32", "fp16", "int8", "int4"],
                      "shards": ["1/2", "2/2"]},
        "host": {"platform": "Linux-6.1-x86_64", "python": "3.11.2", "cpus": 2, "memory_gb": 8.0},
        "runtime_versions": {"torch": "2.13.0", "onnxruntime": "1.31.0", "coremltools": "9.0"},
        "wall_seconds": 3723.4,
        "summary": {"total": len(cells), **{s: sum(c["status"] == s for c in cells) for s in STATUSES}},
        "cells": cells,
    }
    if baseline is not None:
        report["baseline"] = baseline
    jsonschema.validate(report, SCHEMA)
    return report


def make_baseline(regressions: bool = True) -> dict:
    found = [
        {"cell": "recipe000-0b/onnx/int4", "kind": "status", "detail": "passed before, now error: <boom> & co",
         "baseline": "passed", "current": "error"},
        {"cell": "recipe000-1b/onnx/fp16", "kind": "size", "detail": "artefact grew +12.0% (tolerance 2%)",
         "baseline": 1000, "current": 1120},
    ] if regressions else []
    return {"path": "nightly/report.json", "created": "2025-01-01T03:04:05+00:00",
            "tolerances": {"size_growth": 0.02, "error_growth": 0.5, "top1_drop": 0.05},
            "regressions": found, "fixed": ["recipe001-2b/coreml/int8"], "missing": ["gone-7b/onnx/int4"]}


SCHEMA = json.loads((resources.files("mobilekit") / "data" / "matrix-report.schema.json").read_text())


# --- the page, parsed ---------------------------------------------------------------------


class Page(HTMLParser):
    """What the tests look at: table rows, charts, scripts, links, and the text."""

    def __init__(self, html: str):
        super().__init__()
        self.rows, self.svgs, self.scripts, self.urls, self.text = [], 0, 0, [], []
        self.headers, self.sort_values = [], []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and attrs.get("id", "").startswith("cell-"):
            self.rows.append(attrs)
            self.sort_values.append([])
        elif tag == "td" and "data-sort" in attrs and self.rows:
            self.sort_values[-1].append(attrs["data-sort"])
        elif tag == "th" and "data-col" in attrs:
            self.headers.append(attrs["data-col"])
        self.svgs += tag == "svg"
        self.scripts += tag == "script"
        self.urls += [v for k, v in attrs.items() if k in ("src", "href", "xlink:href") and v]

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def full_report():
    return make_report(make_cells(40), make_baseline())


@pytest.fixture(scope="module")
def full_html(full_report):
    return render_html(full_report)


def test_fixtures_follow_the_schema():
    for cells in (make_cells(0), make_cells(12), make_cells(40)):
        jsonschema.validate(make_report(cells), SCHEMA)
    jsonschema.validate(make_report(make_cells(3), make_baseline(regressions=False)), SCHEMA)
    assert {c["status"] for c in make_cells(12)} == set(STATUSES)


def test_one_row_per_cell_coloured_by_status(full_report, full_html):
    page = Page(full_html)
    assert [r["data-status"] for r in page.rows] == [c["status"] for c in full_report["cells"]]
    assert [r["class"] for r in page.rows] == [f"status-{c['status']}" for c in full_report["cells"]]
    assert "tr.status-passed" in full_html and "tr.status-error" in full_html
    assert page.headers[:5] == ["recipe", "family", "target", "scheme", "status"]


def test_header_says_mode_counts_selection_and_versions(full_report, full_html):
    text = " ".join(Page(full_html).text)
    summary = full_report["summary"]
    for status in STATUSES:
        assert f"{summary[status]} {status}" in text
    assert f"of {summary['total']} cells" in text
    for needle in ("tiny", "2025-01-02T03:04:05+00:00", "0.1.0", "Linux-6.1-x86_64", "1 h 02 min 03 s",
                   "targets executorch, onnx, coreml", "shards 1/2, 2/2", "torch 2.13.0", "coremltools 9.0"):
        assert needle in text, needle


def test_numeric_columns_carry_raw_sort_values(full_report, full_html):
    page = Page(full_html)
    first = full_report["cells"][0]
    values = page.sort_values[0]
    assert str(first["export_seconds"]) in values and str(first["artefact_bytes"]) in values
    assert values[0] == "0", "status sorts by severity: passed first"
    errored = next(i for i, c in enumerate(full_report["cells"]) if c["status"] == "error")
    assert set(page.sort_values[errored][1:]) <= {"", str(full_report["cells"][errored]["seconds"])}
    text = " ".join(page.text)
    assert "skipped" in text and "KB" in text and "MB" in text


def test_three_inline_svg_charts_and_nothing_external(full_html):
    page = Page(full_html)
    assert page.svgs == 3
    assert page.scripts == 1
    assert not [u for u in page.urls if u.startswith(("http:", "https:", "//"))], page.urls
    assert "<!DOCTYPE svg" not in full_html and "<?xml" not in full_html
    for external in ('src="http', "src='http", 'href="http', "url(http", "@import", "@font-face"):
        assert external not in full_html


def test_report_strings_are_escaped(full_html):
    page = Page(full_html)
    assert page.scripts == 1, "a message's <script> reached the page as a tag"
    assert "&lt;module&gt;" in full_html and "[1, 4] &amp; [1, 8] &lt;mismatch&gt;" in full_html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in full_html
    assert '<pre class="traceback">' in full_html and TRACEBACK.splitlines()[1] in "".join(page.text)


def test_failures_section_links_each_failing_cell(full_report, full_html):
    failing = [i for i, c in enumerate(full_report["cells"]) if c["status"] != "passed"]
    assert failing
    for i in failing:
        assert f'<details id="fail-{i}"' in full_html and f'href="#fail-{i}"' in full_html
    assert "exceeds its budget" in full_html and "signal SIGSEGV" in full_html
    assert 'href="logs/recipe000-0b.log"' in full_html


def test_baseline_regressions_fixed_and_missing(full_html):
    text = " ".join(Page(full_html).text)
    assert "Regressions vs baseline" in text and "2 regression(s)" in text
    assert "passed before, now error: <boom> & co" in text, "parsed text is the report's, unescaped once"
    assert "recipe001-2b/coreml/int8" in text and "gone-7b/onnx/int4" in text
    assert 'class="regressions"' in full_html


def test_no_regressions_is_said_plainly_and_no_baseline_no_section():
    clean = render_html(make_report(make_cells(3), make_baseline(regressions=False)))
    assert "No regressions." in clean and 'class="regressions"' not in clean
    assert "Regressions vs baseline" not in render_html(make_report(make_cells(3)))


def test_empty_report_renders():
    html = render_html(make_report([]))
    page = Page(html)
    assert page.rows == [] and page.svgs == 3
    assert "0 of 0 shown" in html and "no data" in html


def test_every_cell_failing_renders_without_chart_points():
    cells = [make_cell("a-1b", "onnx", "int4", "error"), make_cell("b-1b", "executorch", "int8", "crashed")]
    page = Page(render_html(make_report(cells)))
    assert len(page.rows) == 2 and page.svgs == 3


def test_five_hundred_cells_stay_under_one_and_a_half_megabytes():
    html = render_html(make_report(make_cells(500)))
    assert len(Page(html).rows) == 500
    assert len(html.encode()) < 1_500_000, f"{len(html.encode()) / 1e6:.2f} MB"


def test_rendering_leaves_matplotlib_global_state_alone():
    # A fresh interpreter: whether pyplot was imported, and the rcParams afterwards.
    code = ("import sys, matplotlib; before = matplotlib.rcParams['svg.fonttype'];"
            "from mobilekit.matrix_html import render_html; import json;"
            "render_html(json.load(sys.stdin));"
            "print('matplotlib.pyplot' in sys.modules, before == matplotlib.rcParams['svg.fonttype'])")
    done = subprocess.run([sys.executable, "-c", code], input=json.dumps(make_report(make_cells(5))),
                          capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split() == ["False", "True"]


# --- in a browser -------------------------------------------------------------------------


@pytest.fixture
def chromium(tmp_path):
    """chromium(*args) -> CompletedProcess, headless, with a throwaway profile and no network."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail(f"none of {', '.join(BROWSERS)} is installed: .ci/run installs Debian chromium for the "
                        "report's browser checks")
        pytest.skip("install Debian chromium (apt-get install chromium) to run the browser checks")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,2000", *args],
            capture_output=True, text=True, timeout=90)

    return run


def png_size_and_pixels(path: Path) -> tuple[int, int, bytes]:
    """(width, height, the decompressed scanlines) of a PNG, without an imaging library."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    idat, at = b"", 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        if kind == b"IDAT":
            idat += data[at + 8:at + 8 + length]
        at += 12 + length
    return width, height, zlib.decompress(idat)


def test_screenshot_is_not_blank(chromium, full_html, tmp_path):
    page, shot = tmp_path / "report.html", tmp_path / "report.png"
    page.write_text(full_html)
    done = chromium(f"--screenshot={shot}", page.as_uri())
    assert shot.exists(), done.stderr[-2000:]
    width, height, pixels = png_size_and_pixels(shot)
    assert (width, height) == (1400, 2000)
    assert len(set(pixels)) > 50, "the screenshot is (nearly) one colour"


def test_clicking_a_header_sorts_numerically_and_the_filter_hides_rows(chromium, tmp_path):
    # Export seconds whose text order (100 < 20 < 5) differs from their numeric order; the
    # error cell has none and stays last in both directions.
    cells = [make_cell("a-1b", "onnx", "int4", "passed", export_seconds=20.0),
             make_cell("b-1b", "onnx", "int4", "error"),
             make_cell("c-1b", "onnx", "int4", "passed", export_seconds=100.0),
             make_cell("d-1b", "onnx", "int4", "failed", export_seconds=5.0)]
    probe = """<script>
      const rows = () => Array.from(document.querySelectorAll('#cells tbody tr'));
      const order = () => rows().map(r => r.cells[0].textContent).join(',');
      const th = document.querySelector('th[data-col="export_s"]');
      th.click(); document.body.dataset.first = order();
      th.click(); document.body.dataset.second = order();
      const filter = document.getElementById('filter');
      filter.value = 'c-1b'; filter.dispatchEvent(new Event('input'));
      document.body.dataset.visible = rows().filter(r => !r.hidden).length;
    </script></body>"""
    page = tmp_path / "report.html"
    page.write_text(render_html(make_report(cells)).replace("</body>", probe))
    done = chromium("--dump-dom", page.as_uri())
    dom = done.stdout
    assert 'data-first="d-1b,a-1b,c-1b,b-1b"' in dom, done.stderr[-2000:]
    assert 'data-second="c-1b,a-1b,d-1b,b-1b"' in dom
    assert 'data-visible="1"' in dom
