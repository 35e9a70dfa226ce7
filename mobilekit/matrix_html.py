"""report.html of `mobilekit matrix`: the report.json (schema: data/matrix-report.schema.json)
rendered as one self-contained page for a person reading a nightly run.

Self-contained because the page is a CI artefact opened from a download, often offline: the
CSS, the JavaScript (sortable, filterable table) and the charts (matplotlib, as inline SVG) are
all in the file; nothing is fetched. Every string from the report is escaped: tracebacks and
converter messages hold <, > and &.

The charts use matplotlib's object API (`Figure`, no pyplot), so rendering neither picks nor
changes the caller's backend, and rcParams are changed only inside a context that restores them.
"""

from __future__ import annotations

import io
from html import escape

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from mobilekit.matrix_verdict import failure_reason, misses

STATUSES = ("passed", "failed", "error", "crashed", "timeout")
# Text in SVG stays text (not glyph paths): a smaller page whose labels can be searched.
# A fixed hash salt makes the SVG ids, and so the page, the same for the same report.
_SVG_RC = {"svg.fonttype": "none", "svg.hashsalt": "mobilekit-matrix", "font.size": 9}
# matplotlib's defaults hold a Date and a Creator URL; the page needs neither.
_SVG_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}
_MARKERS = "osD^v<>ph*"
_FAILED_RING = "#c62828"
# A zero error cannot sit on a log axis; it is drawn at this floor (said in the chart's title).
_LOG_FLOOR = 1e-7


def render_html(report: dict) -> str:
    """The whole page for one report (a dict valid against matrix-report.schema.json)."""
    cells = report["cells"]
    title = f"mobilekit matrix: {report['checkpoint_mode']} checkpoints, {report['created']}"
    body = "\n".join([
        f"<h1>{escape(title)}</h1>",
        _header(report),
        _baseline_section(report.get("baseline")),
        _charts(cells, report["selection"]),
        _table(cells),
        _failures(cells),
    ])
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n"
            f"<script>{_JS}</script>\n</body>\n</html>\n")


# --- header -------------------------------------------------------------------------------


def _header(report: dict) -> str:
    summary, selection, host = report["summary"], report["selection"], report["host"]
    counts = ", ".join(f'<span class="badge {s}">{summary[s]} {s}</span>' for s in STATUSES)
    rows = [
        ("Result", f"{counts} of {summary['total']} cells"),
        ("Checkpoints", escape(report["checkpoint_mode"])),
        ("Created", escape(report["created"])),
        ("mobilekit", escape(report["mobilekit_version"])),
        ("Host", escape(f"{host['platform']}, Python {host['python']}, {host['cpus']} CPUs, "
                        f"{host['memory_gb']:g} GB")),
        ("Wall time", escape(_duration(report["wall_seconds"]))),
        ("Selection", escape(f"recipes {selection['recipes']}; targets {', '.join(selection['targets']) or '-'}; "
                             f"quant {', '.join(selection['quant']) or '-'}; "
                             f"shards {', '.join(selection['shards']) or '-'}")),
        ("Runtimes", escape(", ".join(f"{k} {v}" for k, v in sorted(report["runtime_versions"].items())) or "-")),
    ]
    return _key_value_table(rows, "header")


def _key_value_table(rows: list[tuple[str, str]], css_class: str) -> str:
    """Rows whose values are already HTML."""
    body = "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="{css_class}">{body}</table>'


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {secs:02d} s" if hours else f"{minutes} min {secs:02d} s"


# --- regressions against a baseline -------------------------------------------------------


def _baseline_section(baseline: dict | None) -> str:
    if baseline is None:
        return ""
    tolerances = ", ".join(f"{k} {v:g}" for k, v in baseline["tolerances"].items())
    parts = [
        '<section id="baseline"><h2>Regressions vs baseline</h2>',
        f"<p>Baseline {escape(baseline['path'])} ({escape(baseline['created'])}); tolerances: "
        f"{escape(tolerances)}.</p>",
    ]
    regressions = baseline["regressions"]
    if regressions:
        rows = "".join(
            f'<tr><td>{escape(r["cell"])}</td><td>{escape(r["kind"])}</td><td>{escape(r["detail"])}</td></tr>'
            for r in regressions)
        parts.append(f'<p class="bad">{len(regressions)} regression(s):</p>'
                     f'<table class="regressions"><thead><tr><th>cell</th><th>kind</th><th>detail</th></tr>'
                     f"</thead><tbody>{rows}</tbody></table>")
    else:
        parts.append('<p class="good">No regressions.</p>')
    parts.append(_id_list("Fixed (failed in the baseline, pass now)", baseline["fixed"], "fixed"))
    parts.append(_id_list("Missing (in the baseline, not in this report)", baseline["missing"], "missing"))
    parts.append("</section>")
    return "\n".join(parts)


def _id_list(label: str, ids: list[str], css_class: str) -> str:
    items = "".join(f"<li>{escape(i)}</li>" for i in ids) or "<li>none</li>"
    return f'<h3>{escape(label)}: {len(ids)}</h3><ul class="{css_class}">{items}</ul>'


# --- charts -------------------------------------------------------------------------------


def _charts(cells: list[dict], selection: dict) -> str:
    targets = _ordered({c["target"] for c in cells}, selection["targets"])
    schemes = _ordered({c["scheme"] for c in cells}, selection["quant"])
    sizes = [(c["target"], c["scheme"], c["artefact_bytes"] / 1e6, False)
             for c in cells if c["artefact_bytes"]]
    errors = [(c["target"], c["scheme"], max(m["max_abs_logit_error"], _LOG_FLOOR), c["status"] == "failed")
              for c in cells if (m := _metrics(c, "stage2")) is not None]
    exports = [(c["target"], c["scheme"], c["export_seconds"], False)
               for c in cells if c["export_seconds"] is not None]
    # rcParams are read as artists are made and as the SVG is written: both inside the context
    with rc_context(_SVG_RC):
        figures = [
            _strip_chart("Artefact size per scheme", "MB (log)", sizes, targets, schemes),
            _strip_chart(f"Stage-2 max |Δlogit| per scheme (0 drawn at {_LOG_FLOOR:g})", "max |Δlogit| (log)",
                         errors, targets, schemes),
            _strip_chart("Export time per target and scheme (bar: median)", "seconds (log)", exports,
                         targets, schemes, medians=True),
        ]
        charts = "".join(f'<figure class="chart">{_svg(f)}</figure>' for f in figures)
    return f'<section id="charts"><h2>Charts</h2><div class="charts">{charts}</div></section>'


def _ordered(present: set[str], preferred: list[str]) -> list[str]:
    """`present` in the selection's order, then any the selection did not name, sorted."""
    return [p for p in preferred if p in present] + sorted(present - set(preferred))


def _strip_chart(title: str, ylabel: str, points: list[tuple], targets: list[str], schemes: list[str],
                 medians: bool = False) -> Figure:
    """Points (target, scheme, value, flagged) as one strip per scheme and target, log y.
    Flagged points (a missed budget) get a red ring; `medians` adds a bar at each strip's median.
    (Not Axes.boxplot: it reads every rcParam, which resolves the global backend by importing pyplot.)"""
    fig = Figure(figsize=(7.5, 3.8), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    if not points:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    width = 0.8 / len(targets)
    jitter = np.random.default_rng(0)  # a fixed seed: the same report draws the same page
    for t, target in enumerate(targets):
        offset = (t - (len(targets) - 1) / 2) * width
        mine = [p for p in points if p[0] == target]
        if not mine:
            continue
        x = np.array([schemes.index(p[1]) + offset for p in mine]) + jitter.uniform(-0.3, 0.3, len(mine)) * width
        y = np.array([p[2] for p in mine])
        color = f"C{t}"
        if medians:
            for i, scheme in enumerate(schemes):
                values = [p[2] for p in mine if p[1] == scheme]
                if values:
                    ax.hlines(np.median(values), i + offset - width * 0.45, i + offset + width * 0.45,
                              color=color, linewidth=2)
        ax.scatter(x, y, s=14, color=color, marker=_MARKERS[t % len(_MARKERS)], label=target, alpha=0.8,
                   linewidths=0)
        flagged = np.array([p[3] for p in mine])
        if flagged.any():
            ax.scatter(x[flagged], y[flagged], s=60, facecolors="none", edgecolors=_FAILED_RING, linewidths=1.2)
    ax.set_yscale("log")
    ax.set_xticks(range(len(schemes)), schemes)
    ax.set_xlim(-0.5, len(schemes) - 0.5)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", which="major", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if any(p[3] for p in points):
        handles.append(Line2D([], [], ls="", marker="o", ms=8, mfc="none", mec=_FAILED_RING))
        labels.append("missed a budget")
    ax.legend(handles, labels, fontsize=8, loc="best")
    return fig


def _svg(fig: Figure) -> str:
    """The figure as an <svg> element for inlining (no XML declaration or DOCTYPE)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata=_SVG_METADATA)
    text = buf.getvalue()
    return text[text.index("<svg"):]


# --- the table of cells -------------------------------------------------------------------

# (key, header, numeric): numeric columns sort by their cells' data-sort values.
_COLUMNS = [
    ("recipe", "recipe", False), ("family", "family", False), ("target", "target", False),
    ("scheme", "scheme", False), ("status", "status", True), ("export_s", "export s", True),
    ("cell_s", "cell s", True), ("rss", "peak RSS MB", True), ("size", "artefact", True),
    ("s1_err", "stage-1 max|Δlogit|", True), ("s2_err", "stage-2 max|Δlogit|", True),
    ("s2_cos", "stage-2 mean cos", True), ("s2_top1", "stage-2 top-1", True),
    ("s2_ppl", "stage-2 ppl +%", True), ("why", "misses / error", False),
]


def _table(cells: list[dict]) -> str:
    head = "".join(f'<th data-col="{key}" data-type="{"num" if numeric else "text"}" title="sort by {escape(label)}">'
                   f"{escape(label)}</th>" for key, label, numeric in _COLUMNS)
    toggles = "".join(f'<label class="badge {s}"><input type="checkbox" class="status-toggle" value="{s}" checked> '
                      f"{s}</label>" for s in STATUSES)
    rows = "\n".join(_row(i, c) for i, c in enumerate(cells))
    return (f'<section id="cells-section"><h2>Cells</h2>'
            f'<div class="controls"><input type="search" id="filter" placeholder="filter rows (text)"> {toggles} '
            f'<span id="shown">{len(cells)} of {len(cells)} shown</span></div>'
            f'<table id="cells"><thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody></table></section>')


def _row(index: int, cell: dict) -> str:
    s1, s2 = _stage(cell, "stage1"), _stage(cell, "stage2")
    m2 = s2 if isinstance(s2, dict) else {}
    values = [
        _td(cell["recipe"]), _td(cell["family"]), _td(cell["target"]), _td(cell["scheme"]),
        _td(cell["status"], STATUSES.index(cell["status"])),
        _num(cell["export_seconds"], "{:.1f}"), _num(cell["seconds"], "{:.1f}"),
        _num(cell["peak_rss_mb"], "{:.0f}"), _size(cell["artefact_bytes"]),
        _stage_error(s1), _stage_error(s2),
        _num(m2.get("mean_cosine"), "{:.5f}"), _num(m2.get("top1_agreement"), "{:.1%}"),
        _num(m2.get("ppl_increase_pct"), "{:+.2f}%"),
        _why_cell(index, cell),
    ]
    return (f'<tr id="cell-{index}" class="status-{cell["status"]}" data-status="{cell["status"]}">'
            f'{"".join(values)}</tr>')


def _td(shown: str, sort_value=None, title: str | None = None) -> str:
    """A cell whose `shown` text is escaped here. Numeric columns put their raw value in
    data-sort ("" for none, which sorts last); text columns have none and sort by their text."""
    sort = "" if sort_value is None else f' data-sort="{sort_value}"'
    tip = "" if title is None else f' title="{escape(title)}"'
    return f"<td{sort}{tip}>{escape(shown)}</td>"


def _num(value, fmt: str) -> str:
    if value is None:
        return _td("-", "")
    return _td(fmt.format(value), value)


def _size(nbytes: int | None) -> str:
    if nbytes is None:
        return _td("-", "")
    return _td(f"{nbytes / 1e3:.0f} KB" if nbytes < 1e6 else f"{nbytes / 1e6:.1f} MB", nbytes)


def _stage(cell: dict, name: str):
    """A stage's metrics dict, the reason it was skipped (a str), or None (no validation ran)."""
    stage = (cell["validation"] or {}).get(name)
    if stage is None:
        return None
    if "metrics" in stage:
        return stage["metrics"]
    return stage["skipped"]


def _metrics(cell: dict, name: str) -> dict | None:
    stage = _stage(cell, name)
    return stage if isinstance(stage, dict) else None


def _stage_error(stage) -> str:
    if isinstance(stage, str):
        return _td("skipped", "", title=stage)
    return _num(None if stage is None else stage["max_abs_logit_error"], "{:.3g}")


def _why_cell(index: int, cell: dict) -> str:
    if cell["status"] == "passed":
        return _td("")
    short = failure_reason(cell)
    return f'<td class="why"><a href="#fail-{index}">{escape(short)}</a></td>'


# --- failures -----------------------------------------------------------------------------


def _failures(cells: list[dict]) -> str:
    failing = [(i, c) for i, c in enumerate(cells) if c["status"] != "passed"]
    if not failing:
        return '<section id="failures"><h2>Failures</h2><p class="good">Every cell passed.</p></section>'
    items = "\n".join(_failure(i, c) for i, c in failing)
    return f'<section id="failures"><h2>Failures: {len(failing)}</h2>\n{items}\n</section>'


def _failure(index: int, cell: dict) -> str:
    parts = [f'<details id="fail-{index}" class="status-{cell["status"]}">'
             f'<summary><b>{escape(cell["id"])}</b>: {escape(cell["status"])}: {escape(failure_reason(cell))}</summary>']
    missed = misses(cell)
    if missed:
        parts.append("<ul>" + "".join(f"<li>{escape(m)}</li>" for m in missed) + "</ul>")
    if cell["error"]:
        parts.append(f'<pre class="traceback">{escape(cell["error"]["traceback"])}</pre>')
    if cell["log"]:
        # a path relative to report.html, which sits beside the logs/ folder
        parts.append(f'<p>Log: <a href="{escape(cell["log"])}">{escape(cell["log"])}</a></p>')
    parts.append("</details>")
    return "".join(parts)


_CSS = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.2em; margin-top: 1.5em; } h3 { font-size: 1em; }
table { border-collapse: collapse; }
td, th { padding: 2px 6px; border: 1px solid #ddd; text-align: left; vertical-align: top; }
table.header th { background: #f4f4f4; }
#cells th { background: #f4f4f4; cursor: pointer; user-select: none; position: sticky; top: 0; white-space: nowrap; }
#cells th[aria-sort=ascending]::after { content: " \\25B2"; }
#cells th[aria-sort=descending]::after { content: " \\25BC"; }
#cells td[data-sort] { text-align: right; font-variant-numeric: tabular-nums; }
#cells { font-size: 13px; } #cells td { white-space: nowrap; }
#cells td.why { white-space: normal; min-width: 16em; max-width: 32em; overflow-wrap: anywhere; }
tr.status-passed { background: #e8f5e9; }
tr.status-failed { background: #fff3cd; }
tr.status-error, tr.status-crashed, tr.status-timeout { background: #fde2e1; }
.badge { padding: 1px 6px; border-radius: 3px; white-space: nowrap; }
.badge.passed { background: #c8e6c9; } .badge.failed { background: #ffe08a; }
.badge.error, .badge.crashed, .badge.timeout { background: #f8b4b0; }
.bad, table.regressions td { color: #b71c1c; } .good { color: #1b5e20; }
.controls { margin: 0.5em 0; } #filter { width: 20em; } #shown { color: #666; margin-left: 1em; }
.charts { display: flex; flex-wrap: wrap; gap: 1em; }
figure.chart { margin: 0; flex: 1 1 560px; max-width: 760px; }
figure.chart svg { width: 100%; height: auto; }
details { margin: 0.4em 0; padding: 0.3em 0.6em; border-left: 4px solid #ccc; }
details.status-failed { border-color: #f0b400; }
details.status-error, details.status-crashed, details.status-timeout { border-color: #c62828; }
pre.traceback { background: #f7f7f7; padding: 0.5em; overflow-x: auto; font-size: 12px; }
"""

# Sorting: numeric columns compare data-sort numbers, blanks (no value) last in either
# direction; a second click on the same header reverses. Filtering: text and status boxes.
_JS = """
(function () {
  const table = document.getElementById('cells');
  const tbody = table.tBodies[0];
  const headers = Array.from(table.tHead.rows[0].cells);
  function key(row, col, numeric) {
    const td = row.cells[col];
    const raw = td.hasAttribute('data-sort') ? td.getAttribute('data-sort') : td.textContent;
    if (!numeric) return raw.toLowerCase();
    return raw === '' ? null : parseFloat(raw);
  }
  function sortBy(th) {
    const col = th.cellIndex, numeric = th.dataset.type === 'num';
    const sign = th.getAttribute('aria-sort') === 'ascending' ? -1 : 1;
    headers.forEach(h => h.removeAttribute('aria-sort'));
    th.setAttribute('aria-sort', sign === 1 ? 'ascending' : 'descending');
    const rows = Array.from(tbody.rows);
    rows.sort((a, b) => {
      const x = key(a, col, numeric), y = key(b, col, numeric);
      if (x === null || y === null) return (x === null) - (y === null);
      return sign * (x < y ? -1 : x > y ? 1 : 0);
    });
    rows.forEach(r => tbody.appendChild(r));
  }
  headers.forEach(th => th.addEventListener('click', () => sortBy(th)));
  const filter = document.getElementById('filter');
  const toggles = Array.from(document.querySelectorAll('.status-toggle'));
  function applyFilter() {
    const text = filter.value.toLowerCase();
    const statuses = new Set(toggles.filter(t => t.checked).map(t => t.value));
    let shown = 0;
    Array.from(tbody.rows).forEach(r => {
      r.hidden = !(statuses.has(r.dataset.status) && r.textContent.toLowerCase().includes(text));
      shown += !r.hidden;
    });
    document.getElementById('shown').textContent = shown + ' of ' + tbody.rows.length + ' shown';
  }
  filter.addEventListener('input', applyFilter);
  toggles.forEach(t => t.addEventListener('change', applyFilter));
})();
"""
