"""How the nightly matrix judges a cell, in one place for the CLI, the baseline comparison
(mobilekit.matrix) and report.html (mobilekit.matrix_html): why a cell did not pass, and
how far a cell may move against a baseline before that is a regression. No imports, so the
CLI can offer the tolerances as option defaults without loading the matrix."""

from __future__ import annotations

# What --baseline tolerates before calling a change a regression (README "Nightly matrix").
DEFAULT_TOLERANCES = {"size_growth": 0.02, "error_growth": 0.5, "top1_drop": 0.05}


def failure_reason(cell: dict) -> str:
    """One line saying why a cell did not pass (the CLI, regressions and report.html say it alike)."""
    error = cell["error"]
    if error:
        first = error["message"].splitlines()[0] if error["message"] else ""
        return f"{error['type']}: {first}" if first else error["type"]
    return "; ".join(misses(cell)) or cell["status"]


def misses(cell: dict) -> list[str]:
    """Each budget a validated cell missed, prefixed with its stage."""
    validation = cell["validation"] or {}
    return [f"{name}: {m}" for name in ("stage1", "stage2") for m in (validation.get(name) or {}).get("misses", [])]
