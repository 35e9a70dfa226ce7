"""The GitHub workflows run the commands the README documents, with the shape the nightly
matrix needs (a list job, shard jobs with fail-fast off, a merge job that always runs)."""

from pathlib import Path

import yaml

ROOT = Path(__file__).parents[2]


def _workflow(name: str) -> dict:
    return yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())


def _mobilekit_commands(workflow: dict) -> list[str]:
    lines = [line.strip() for job in workflow["jobs"].values() for step in job["steps"]
             for line in step.get("run", "").splitlines()]
    found = []
    for line in lines:
        if "mobilekit matrix" in line:
            command = line[line.index("mobilekit matrix"):]
            found.append(command.split(")")[0] if line.startswith("echo") else command)
    return found


def test_nightly_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    commands = _mobilekit_commands(_workflow("nightly.yml"))
    assert len(commands) == 5
    for command in commands:
        assert command in readme, command


def test_nightly_shape():
    jobs = _workflow("nightly.yml")["jobs"]
    assert list(jobs) == ["sweeps", "cells", "shard", "merge"]
    assert any(step.get("run") == "make test-nightly" for step in jobs["sweeps"]["steps"])
    assert jobs["shard"]["strategy"]["fail-fast"] is False
    assert "needs.cells.outputs.shards" in jobs["shard"]["strategy"]["matrix"]["shard"]
    assert jobs["merge"]["needs"] == "shard" and jobs["merge"]["if"] == "always()"
    uploads = [s for s in jobs["merge"]["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert uploads and uploads[0]["with"]["name"] == "matrix-report"


def test_make_test_leaves_the_nightly_sweeps_to_make_test_nightly():
    makefile = (ROOT / "Makefile").read_text()
    test = makefile[makefile.index("\ntest:"):makefile.index("\ntest-nightly:")]
    assert '-m "not nightly"' in test
    assert "-m nightly" in makefile[makefile.index("\ntest-nightly:"):]


def test_ci_runs_the_ci_entry_point():
    steps = _workflow("ci.yml")["jobs"]["test"]["steps"]
    assert any(step.get("run") == ".ci/run" for step in steps)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
