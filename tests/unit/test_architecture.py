"""The architecture's rules, checked (docs/ARCHITECTURE.md; issue 15): the import contracts in
pyproject.toml's [tool.importlinter], no import cycles among mobilekit's modules, and a CLI
whose help, list and info load no torch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _env() -> dict:
    # This checkout's mobilekit, whatever the interpreter's editable install points at.
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def test_import_contracts_hold():
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: pip install -e '.[dev]' (import-linter)")
    run = subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=REPO, env=_env(), capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, f"import contracts broken:\n{run.stdout}\n{run.stderr}"


def test_no_import_cycles():
    graph = grimp.build_graph("mobilekit", cache_dir=None)
    imports = {module: graph.find_modules_directly_imported_by(module) for module in graph.modules}
    cycles = []
    state: dict[str, str] = {}  # module -> "open" while on the DFS path, "done" after

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(imports[module]):
            if state.get(imported) == "open":
                cycles.append(path[path.index(imported):] + [imported])
            elif imported not in state:
                visit(imported, path + [imported])
        state[module] = "done"

    for module in sorted(imports):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def _loads_torch(*cli_args: str) -> bool:
    """Whether running `mobilekit CLI_ARGS` in a fresh interpreter imports torch."""
    code = textwrap.dedent(f"""
        import sys
        from mobilekit import cli
        try:
            cli.main({list(cli_args)!r})
        except SystemExit as e:
            assert not e.code, e.code
        print("torch" in sys.modules, file=sys.stderr)
    """)
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**_env(), "HF_HUB_OFFLINE": "1"},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stderr.strip().splitlines()[-1] == "True"


def test_help_does_not_load_torch():
    assert not _loads_torch("--help")
    assert not _loads_torch("export", "--help")


@pytest.mark.parametrize("args", [("list",), ("info", "smollm2-135m")])
def test_list_and_info_do_not_load_torch(args):
    assert not _loads_torch(*args)
